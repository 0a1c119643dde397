"""The one-step generator: a trainable copy of the teacher's network called at ``sigma_init``."""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import Denoiser
from .lora import trainable


class OneStepGenerator(nn.Module):
    """``x_g = G(z) = D_theta(sigma_init * z, sigma_init, cond)``; z (B, *shape) ~ N(0, I).

    ``network``: the teacher's (copied), or an ``AdapterView`` on it (LoRA: trains the adapter only).

    Starts from the teacher's weights (SiD / DMD2 / Uni-Instruct initialisation).
    """

    def __init__(self, network: Denoiser, sigma_init: float):
        super().__init__()
        self.network = trainable(network)  # a full fp32 copy, or a LoRA adapter on the shared base
        self.sigma_init = float(sigma_init)

    def forward(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        sigma = torch.full((z.shape[0],), self.sigma_init, device=z.device, dtype=torch.float32)
        return self.network(self.sigma_init * z, sigma, cond)
