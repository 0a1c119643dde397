"""Discriminator / density-ratio head on network features.

The head maps features of a frozen teacher or of the fake score at ``(x_t, sigma)`` to a
logit. Trained as a logistic discriminator (teacher samples "real", generator samples
"fake"), its logit estimates ``log p_teacher,sigma / q_generator,sigma`` at its optimum,
the density ratio f-distill weights read (arXiv 2502.15681, Sec. 4); the same logit
gives the non-saturating GAN loss (DMD2, SiDA).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import FourierEmbedding


class DiscriminatorHead(nn.Module):
    """features (B, C) or (B, C, H, W), sigma (B,) -> logit (B,) fp32."""

    def __init__(self, feature_shape: tuple[int, ...], hidden: int = 128):
        super().__init__()
        channels = feature_shape[0]
        self.spatial = len(feature_shape) == 3
        if self.spatial:
            groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 1)
            self.conv = nn.Sequential(
                nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, hidden, 3, padding=1)
            )
            width = hidden
        else:
            self.conv = None
            width = channels
        self.embed = FourierEmbedding(32)
        self.mlp = nn.Sequential(nn.Linear(width + 32, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h = features.float()
        if self.spatial:
            h = self.conv(h).mean(dim=(2, 3))
        h = torch.cat([h, self.embed(sigma.float().log() / 4)], dim=1)
        return self.mlp(h)[:, 0].float()


def head_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss ``softplus(-l_real) + softplus(l_fake)``; (B,)."""
    return F.softplus(-logit_real) + F.softplus(logit_fake)


def generator_gan_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-l(x_g + sigma n))`` (Goodfellow et al. 2014); (B,)."""
    return F.softplus(-logit_fake)


def r1_penalty(logit_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty ``|grad_x l(x_real)|^2`` (Mescheder et al. 2018); (B,). x_real needs grad."""
    (grad,) = torch.autograd.grad(logit_real.sum(), x_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)
