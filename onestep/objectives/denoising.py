"""The denoising loss that trains the fake score (and fits denoisers): EDM's weighted L2."""

from __future__ import annotations

import torch

from ..core.schedule import edm_loss_weight


def fake_score_loss(D_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM denoising loss ``lam(sigma) |D(x0 + sigma n) - x0|^2`` averaged over chw; (B,).

    (arXiv 2206.00364, Eq. 2 with the weight of Eq. 8.) Shapes: D_pred, x0 (B, ...), sigma (B,).
    """
    lam = edm_loss_weight(sigma, sigma_data)
    return lam * (D_pred - x0).pow(2).flatten(1).mean(1)
