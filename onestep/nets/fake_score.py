"""The fake score: a trainable copy of the teacher's network that tracks the generator's score."""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import Denoiser
from .lora import trainable


class FakeScore(nn.Module):
    """``Df = F(x_t, sigma, cond)``: the denoiser of the generator's own distribution.

    ``forward(..., return_features=True)`` also returns the network's feature tap
    (the bottleneck), which a discriminator may read (DMD2 / SiDA).
    """

    def __init__(self, network: Denoiser):
        super().__init__()
        self.network = trainable(network)  # a full fp32 copy, or a LoRA adapter on the shared base

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None, return_features: bool | str = False):
        return self.network(x, sigma, cond, return_features=return_features)

    def stops_early(self) -> bool:
        """Whether ``return_features="only"`` skips its layers after the last feature tap."""
        return self.network.stops_early()
