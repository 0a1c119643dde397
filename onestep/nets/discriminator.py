"""The discriminator: heads that turn a network's feature taps into logits.

The features are those of the frozen teacher or of the trainable fake score at ``(x_t, sigma)``
(they already depend on sigma through the network's noise conditioning). Trained as a logistic
discriminator (``objectives.gan``), the logits estimate ``log p_teacher,sigma / q_generator,sigma``:
the density ratio of f-distill and Uni-Instruct, and the GAN term's logit.

Heads, per tap:

- ``conv`` (DMD2, FastGen): conv 3x3, GroupNorm, SiLU, then strided convs (k4 s2) with GroupNorm
  and SiLU down to 4x4, one conv over the remaining map down to 1x1 with SiLU (no GroupNorm at
  1x1: with few channels per group it would erase the signal), and a 1x1 conv to one logit;
  vector features (an MLP's hidden layer) get Linear, SiLU, Linear.
- ``mean`` (SiDA): no parameters; the logit map is the features' channel mean, one logit per
  location. Only meaningful on a trainable encoder (the fake score's).

``forward(features)`` returns every logit, (B, L): one per head for ``conv``, one per location
(of every tap) for ``mean``. Losses average over L per sample; the ratio reads their mean.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("conv", "mean")


def _groups(channels: int) -> int:
    """GroupNorm groups of at least 8 channels (as many as 32 groups)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 8 or g == 1)


def _conv_head(shape: tuple[int, ...], hidden: int) -> nn.Module:
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], hidden), nn.SiLU(), nn.Linear(hidden, 1))
    channels, res = shape[0], shape[-1]
    layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1), nn.GroupNorm(_groups(hidden), hidden),
                               nn.SiLU()]
    while res > 4:
        layers += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), nn.GroupNorm(_groups(hidden), hidden), nn.SiLU()]
        res //= 2
    if res > 1:
        layers += [nn.Conv2d(hidden, hidden, res), nn.SiLU()]
    layers += [nn.Conv2d(hidden, 1, 1), nn.Flatten()]
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """features: list of (B, C, H, W) or (B, C) tensors -> logits (B, L) fp32."""

    def __init__(self, feature_shapes: list[tuple[int, ...]], head: str = "conv", hidden: int = 64):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown discriminator head {head!r} (known: {', '.join(HEADS)})")
        self.head = head
        self.heads = nn.ModuleList(_conv_head(tuple(s), hidden) for s in feature_shapes) if head == "conv" else None

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.head == "mean":
            return torch.cat([f.float().mean(1).flatten(1) if f.ndim > 2 else f.float().mean(1, keepdim=True)
                              for f in features], dim=1)
        return torch.cat([h(f.float()) for h, f in zip(self.heads, features)], dim=1)
