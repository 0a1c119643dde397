"""Exponential moving average of a module's parameters, with its half-life in samples."""

from __future__ import annotations

import copy

import torch
from torch import nn


def local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The local shards of DTensors (plain tensors unchanged)."""
    return [t.to_local() if hasattr(t, "to_local") else t for t in tensors]


def ema_beta(samples_per_step: float, halflife_samples: float) -> float:
    """Per-step decay giving a half-life of ``halflife_samples`` (EDM's ``ema_halflife_kimg``)."""
    return 0.5 ** (samples_per_step / halflife_samples)


class EMA:
    """``ema <- beta ema + (1 - beta) live`` after every optimizer step; ``module`` is a frozen copy."""

    def __init__(self, module: nn.Module, beta: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.beta = beta
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        if self._pairs is None:  # listed once (after any sharding: the local shards of both)
            self._pairs = local(list(self.module.parameters())), local(list(live.parameters()))
        torch._foreach_lerp_(*self._pairs, 1.0 - self.beta)
