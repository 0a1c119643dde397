"""The discriminator head on network features.

It maps features of the frozen teacher or of the fake score at ``(x_t, sigma)`` to a logit.
Trained as a logistic discriminator (``objectives.gan``), its logit estimates
``log p_teacher,sigma / q_generator,sigma``: the density ratio of f-distill and Uni-Instruct,
and the GAN term's logit (DMD2, SiDA).
"""

from __future__ import annotations

import torch
from torch import nn

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
