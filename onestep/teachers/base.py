"""The frozen teacher: ``D(x, sigma, cond) -> x0_hat`` in fp32, always in eval mode.

Every teacher speaks the denoiser language of ``nets.denoiser`` and exposes a ``network``:
the module the generator and fake score are copied from. Conversions from other
parameterisations happen inside the network wrapper, never downstream. The protocol:

- ``denoise(x, sigma, cond)`` and ``forward(..., return_features)``: x (B, *sample_shape),
  sigma (B,) -> x0_hat (B, *sample_shape) fp32 [, the network's feature tap];
- ``sample_shape``, ``cond_kind`` (none / class / text), ``num_classes``, ``is_latent``,
  ``sigma_data``, ``sigma_range``: read from its network;
- ``num_labels`` (classes or prompts), ``sample_labels(n, rng)``, ``cond_for(labels)``:
  class ids or prompt indices (n,) -> conditioning; ``sample_cond(n, rng)`` draws both;
- ``decode(x)`` / ``encode(images)``, ``image_shape``: samples <-> images in [-1, 1] (the VAE for
  latent teachers; identity otherwise).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.modules import freeze
from ..nets.denoiser import Denoiser, call_fp32


class Teacher(nn.Module):
    """A frozen denoiser (see module docstring). Subclasses may override ``_denoise``."""

    def __init__(self, network: Denoiser):
        super().__init__()
        self.network = freeze(network)
        self.sample_shape = tuple(network.sample_shape)

    # protocol properties, read from the network
    @property
    def cond_kind(self) -> str:
        return self.network.cond_kind

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    @property
    def is_latent(self) -> bool:
        return self.network.is_latent

    @property
    def sigma_data(self) -> float:
        return self.network.sigma_data

    @property
    def sigma_range(self) -> tuple[float, float]:
        return self.network.sigma_range

    def train(self, mode: bool = True):  # a teacher is always in eval mode
        return super().train(False)

    def _denoise(self, x, sigma, cond, features: bool | str):
        """(x0_hat fp32, features or None); ``features="only"``: x0_hat may be None."""
        return call_fp32(self.network, x, sigma, cond, features)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return self._denoise(x, sigma, cond, False)[0]

    def forward(self, x, sigma, cond=None, return_features: bool | str = False):
        d, feats = self._denoise(x, sigma, cond, return_features)
        return (d, feats) if return_features else d

    @property
    def num_labels(self) -> int:
        """How many labels index the conditioning: classes, or prompts (0: unconditional)."""
        return self.num_classes if self.cond_kind == "class" else 0

    def sample_labels(self, n: int, rng: torch.Generator) -> torch.Tensor | None:
        """``n`` labels uniform over ``num_labels`` (None for unconditional teachers); (n,) long."""
        return torch.randint(0, self.num_labels, (n,), generator=rng) if self.num_labels else None

    def sample_cond(self, n: int, rng: torch.Generator):
        """Conditioning for ``n`` samples drawn with ``rng`` (None for unconditional teachers)."""
        labels = self.sample_labels(n, rng)
        return None if labels is None else self.cond_for(labels)

    def cond_for(self, labels: torch.Tensor | None):
        """Conditioning of labels (n,): class ids as they are, prompt indices -> prompt embeddings."""
        return labels

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one decoded image (the sample shape for pixel teachers)."""
        return self.sample_shape

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples -> images in [-1, 1]; (B, C, H, W) fp32."""
        return x

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, *image_shape) -> samples (identity for pixel teachers)."""
        return images
