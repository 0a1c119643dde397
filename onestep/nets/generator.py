"""The one-step generator: a trainable copy of the teacher's network called at ``sigma_init``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .denoiser import Denoiser


class OneStepGenerator(nn.Module):
    """``x_g = G(z) = D_theta(sigma_init * z, sigma_init, cond)``; z (B, *shape) ~ N(0, I).

    Starts from the teacher's weights (SiD / DMD2 / Uni-Instruct initialisation).
    """

    def __init__(self, network: Denoiser, sigma_init: float):
        super().__init__()
        self.network = copy.deepcopy(network).float().train()  # trainable weights in fp32
        for p in self.network.parameters():
            p.requires_grad_(True)
        self.sigma_init = float(sigma_init)

    def forward(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=torch.float32)
        return self.network(self.sigma_init * z, sigma, cond)
