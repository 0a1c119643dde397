"""A small MLP denoiser with EDM preconditioning, for low-dimensional (analytic) teachers."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..portable.edm_form import edm_coefficients
from .denoiser import Denoiser


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of c_noise = log(sigma)/4 (as in EDM's NCSN++ variant)."""

    def __init__(self, dim: int, scale: float = 4.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2, generator=torch.Generator().manual_seed(0)) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """c_noise (B,) -> (B, dim)."""
        arg = 2 * math.pi * c_noise[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLPDenoiser(Denoiser):
    """``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``; x (B, d), sigma (B,) -> (B, d).

    ``forward(..., return_features=True)`` also returns the hidden layers a discriminator reads:
    ``[last (B, hidden)]`` (``feature_taps = "mid"``) or every hidden layer (``"encoder"``).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, sigma_data: float = 0.5):
        super().__init__()
        self.dim, self.hidden, self.depth, self.sigma_data = dim, hidden, depth, sigma_data
        self.embed = FourierEmbedding(hidden)
        self.inp = nn.Linear(dim, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)
        self.feature_dim = hidden
        self.sample_shape = (dim,)

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def spec(self) -> dict:
        """JSON-able description for ``nets.spec.build_network``."""
        config = {"dim": self.dim, "hidden": self.hidden, "depth": self.depth, "sigma_data": self.sigma_data}
        return {"type": "mlp", "config": config}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None, return_features: bool = False):
        sigma = sigma.reshape(-1).to(torch.float32)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        h = self.inp(c_in[:, None] * x) + self.emb_proj(self.embed(c_noise))
        h = nn.functional.silu(h)
        hidden = [h]
        for block in self.blocks:
            h = nn.functional.silu(block(h))
            hidden.append(h)
        d = c_skip[:, None] * x + c_out[:, None] * self.out(h).float()
        if not return_features:
            return d.float()
        return d.float(), (hidden if self.feature_taps == "encoder" else [h])
