"""f-divergence weight functions in terms of the density ratio ``r = p_teacher / q_generator``.

``D_f(p || q) = E_q[f(r)]`` and its generator gradient is
``-E_q[h(r) (s_p - s_q) dx/dtheta]`` with ``h(r) = f''(r) r^2``
(f-distill, arXiv 2502.15681, Eq. 7). Uni-Instruct (arXiv 2505.20755) also needs
``h - r h'``, ``r h'`` and ``q = r (h - r h')'``. Each is written in closed form of the
log-ratio ``l = log r`` (docs/design.md, section 3 table); the tests check them against
autograd derivatives of ``f``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch

FName = Literal["rkl", "srkl", "js", "sh", "fkl", "jeffreys", "chi2", "neyman", "alpha"]
F_NAMES: tuple[str, ...] = typing.get_args(FName)


@dataclass(frozen=True)
class FWeights:
    """Per-sample weights, each (B,): ``h``, ``h - r h'``, ``r h'`` and ``q = r (h - r h')'``."""

    h: torch.Tensor
    h_minus_rh: torch.Tensor
    rh: torch.Tensor
    q: torch.Tensor

    def scaled(self, c: torch.Tensor | float) -> FWeights:
        """All four times ``c`` (the weights of ``c f``)."""
        return FWeights(self.h * c, self.h_minus_rh * c, self.rh * c, self.q * c)


def f_weights(name: str, log_r: torch.Tensor, f_alpha: float = 0.5) -> FWeights:
    """Closed-form weights of divergence ``name`` at ``log_r`` (B,)."""
    r = log_r.exp()
    one = torch.ones_like(log_r)
    zero = torch.zeros_like(log_r)
    if name == "rkl":
        return FWeights(one, one, zero, zero)
    if name == "srkl":
        return FWeights(
            torch.sigmoid(-log_r), (2 * r + 1) / (r + 1) ** 2, -r / (r + 1) ** 2, -2 * r**2 / (r + 1) ** 3
        )
    if name == "js":
        return FWeights(torch.sigmoid(log_r), (r / (r + 1)) ** 2, r / (r + 1) ** 2, 2 * r**2 / (r + 1) ** 3)
    if name == "sh":
        sq = (0.5 * log_r).exp()
        return FWeights(sq / 4, sq / 8, sq / 8, sq / 16)
    if name == "fkl":
        return FWeights(r, zero, r, zero)
    if name == "jeffreys":
        return FWeights(1 + r, one, r, zero)
    if name == "chi2":
        r2 = (2 * log_r).exp()
        return FWeights(2 * r2, -2 * r2, 4 * r2, -4 * r2)
    if name == "neyman":
        inv = (-log_r).exp()
        return FWeights(2 * inv, 4 * inv, -2 * inv, -4 * inv)
    if name == "alpha":
        a = f_alpha
        ra = (a * log_r).exp()
        return FWeights(ra, (1 - a) * ra, a * ra, a * (1 - a) * ra)
    raise ValueError(f"unknown f-divergence '{name}' (known: {', '.join(F_NAMES)})")


def f_value(name: str, r: torch.Tensor, f_alpha: float = 0.5) -> torch.Tensor:
    """The generator ``f(r)`` of each divergence, up to terms linear in r (which do not change
    ``E_q[f(r)]``'s gradient since ``E_q[r] = 1``); ``f''(r) r^2 = h(r)``."""
    if name == "rkl":
        return -r.log()
    if name == "srkl":
        return (r + 1) * ((r + 1) / r).log()
    if name == "js":
        return r * r.log() - (r + 1) * (r + 1).log()
    if name == "sh":
        return -r.sqrt()
    if name == "fkl":
        return r * r.log()
    if name == "jeffreys":
        return (r - 1) * r.log()
    if name == "chi2":
        return (r - 1) ** 2
    if name == "neyman":
        return 1 / r
    if name == "alpha":
        a = f_alpha
        return r**a / (a * (a - 1))
    raise ValueError(f"unknown f-divergence '{name}' (known: {', '.join(F_NAMES)})")
