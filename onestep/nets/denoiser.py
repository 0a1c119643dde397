"""The denoiser protocol every network speaks (docs/design.md section 1).

``D(x_t, sigma, cond) -> x0_hat`` in the EDM form ``x_t = x0 + sigma eps``, fp32 in and out,
whatever the network's native parameterisation. Everything outside ``nets/`` and
``teachers/`` reaches a network only through this interface: its sample shape, conditioning
kind, whether it works in a VAE's latent space, its sigma_data and trained sigma range, a
feature tap for a discriminator, gradient checkpointing, and a JSON spec that rebuilds it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

CondKind = Literal["none", "class", "text"]


class Denoiser(nn.Module):
    """``forward(x (B, *sample_shape), sigma (B,), cond=None, return_features=False)``
    -> x0_hat (B, *sample_shape) fp32, or (x0_hat, features) with ``return_features``:
    ``features`` is a list of feature maps (B, C, H, W) or vectors (B, C), the taps
    ``feature_taps`` selects (``mid``: the bottleneck; ``encoder``: one per resolution, then the
    bottleneck). ``return_features="only"``: (x0_hat or None, features), the same features; a
    network whose ``stops_early()`` is true stops after its last tap and returns None for x0_hat
    (a discriminator's pass then skips the decoder, about three quarters of a UNet's cost; docs/design.md).

    ``cond``: None (``cond_kind == "none"``), class labels (B,) long (``"class"``), or prompt
    embeddings (B, L, D) (``"text"``).
    """

    feature_taps: Literal["mid", "encoder"] = "mid"

    sample_shape: tuple[int, ...]
    sigma_data: float = 0.5
    cond_kind: CondKind = "none"
    num_classes: int = 0
    is_latent: bool = False  # samples live in a VAE's latent space (decoded by the teacher's VAE)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """Smallest and largest sigma the network was trained on."""
        return 0.0, math.inf

    def spec(self) -> dict:
        """JSON-able description that ``nets.spec.build_network`` rebuilds (untrained)."""
        raise NotImplementedError

    def enable_gradient_checkpointing(self, function=None) -> None:
        """Recompute activations in backward where the network supports it (default: no-op);
        ``function``: the checkpointing function (None: the network's default)."""

    def stops_early(self) -> bool:
        """Whether ``return_features="only"`` skips the layers after the last feature tap."""
        return False

    def shard_units(self) -> list[nn.Module]:
        """The blocks FSDP shards one by one (default: none; the whole network is one unit)."""
        return []

    def pipeline_parts(self, sigma_init: float) -> dict | None:
        """Keyword arguments of ``OneStepPipeline`` for a generator at ``sigma_init``, or None
        where the network does not export as a diffusers pipeline."""
        return None


def call_fp32(net, x: torch.Tensor, sigma: torch.Tensor, cond, features: bool | str):
    """(x0_hat (B, *sample_shape) in fp32, the feature taps or None) of a denoiser-like module
    (a ``Denoiser``, a teacher, a fake score); the one call path of the frozen networks.
    ``features="only"``: x0_hat may be None (the network stopped after its last tap)."""
    if features:
        d, feats = net(x, sigma, cond, return_features=features)
        return (None if d is None else d.float()), feats
    return net(x, sigma, cond).float(), None
