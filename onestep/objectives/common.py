"""Shared pieces of the objectives: their inputs, reductions, normalisers and the fake-score loss.

Notation (DESIGN.md section 1): ``x_g`` generator samples, ``x_t = x_g + sigma n``,
``Dr = teacher(x_t)``, ``Df = fake_score(x_t)``, ``Delta = Dr - Df = sigma^2 (s_p - s_q)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedule import edm_loss_weight
from .fdiv import FWeights


@dataclass
class ObjectiveInputs:
    """Everything a generator objective reads. Shapes: x_* (B, ...), sigma (B,).

    ``Dr`` / ``Df`` carry gradients to ``x_g`` through the networks' inputs exactly when
    the objective's ``grad_through`` names them; ``weights`` are the (detached,
    normalised) f-divergence weights at ``x_t`` (None for objectives that need none).
    """

    x_g: torch.Tensor
    sigma: torch.Tensor
    Dr: torch.Tensor
    Df: torch.Tensor
    weights: FWeights | None = None


def sum_dims(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the batch: (B, ...) -> (B,)."""
    return t.flatten(1).sum(1)


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def wf_normaliser(x_g: torch.Tensor, Dr: torch.Tensor) -> torch.Tensor:
    """``wf = mean_{chw} |x_g - Dr|``, detached, clamped >= 1e-5 (DMD2 arXiv 2405.14867 Eq. 2; SiD); (B,)."""
    return (x_g - Dr).detach().abs().flatten(1).mean(1).clamp_min(1e-5)


def per_sample_norm(x_g: torch.Tensor, Dr: torch.Tensor, mode: str) -> torch.Tensor:
    """The per-sample divisor of a ``weight_norm`` mode: ``wf`` or ones (``none``); (B,)."""
    if mode == "wf":
        return wf_normaliser(x_g, Dr)
    return torch.ones(x_g.shape[0], device=x_g.device, dtype=x_g.dtype)


def inject_gradient(x_g: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample surrogate whose batch mean has gradient ``g / numel`` w.r.t. ``x_g``.

    ``0.5 * mse(x_g, (x_g - g).detach())`` (DMD2): ``g`` is computed without gradients.
    Returns (B,): ``0.5 * mean_{chw} (x_g - sg(x_g - g))^2``.
    """
    target = (x_g - g).detach()
    return 0.5 * (x_g - target).pow(2).flatten(1).mean(1)


def fake_score_loss(D_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM denoising loss ``lam(sigma) |D(x0 + sigma n) - x0|^2`` averaged over chw; (B,).

    (arXiv 2206.00364, Eq. 2 with the weight of Eq. 8.) Shapes: D_pred, x0 (B, ...), sigma (B,).
    """
    lam = edm_loss_weight(sigma, sigma_data)
    return lam * (D_pred - x0).pow(2).flatten(1).mean(1)


def regression_loss(x_g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DMD's regression term ``0.5 |G(z) - y(z)|^2`` summed over chw (arXiv 2311.18828, Eq. 7,
    with the squared L2 distance in place of LPIPS); (B,). Its gradient per pixel is the residual
    ``G(z) - y``, on the scale of the divergence gradients after the ``wf`` normalisation."""
    return 0.5 * sum_dims((x_g - y.detach()) ** 2)
