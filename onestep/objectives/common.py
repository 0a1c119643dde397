"""Per-sample normalisers and the gradient-injection surrogate shared by several objectives.

Notation (docs/design.md section 1): ``x_g`` generator samples, ``x_t = x_g + sigma n``,
``Dr = teacher(x_t)``, ``Df = fake_score(x_t)``, ``Delta = Dr - Df = sigma^2 (s_p - s_q)``.
"""

from __future__ import annotations

from typing import Literal

import torch

# the per-sample normaliser every normalised objective takes as its ``weight_norm`` parameter
WeightNorm = Literal["wf", "none"]
WEIGHT_NORM_DOC = "per-sample normaliser: wf = mean|x_g - Dr| (DMD2, SiD) or none"


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
