"""nn.Module helpers: freezing, temporary freezing, and a parameter fingerprint."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for every parameter; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@contextlib.contextmanager
def frozen(*modules: nn.Module | None):
    """Temporarily stop gradients into the parameters of ``modules`` (not through their inputs)."""
    saved = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def fingerprint(module: nn.Module, skip=None) -> float:
    """Sum of |parameters| in float64: changes when any parameter changes (a cheap invariant check).
    ``skip(name)``: True for parameters left out (a shared base's LoRA adapters)."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for n, p in module.named_parameters()
                         if skip is None or not skip(n)))
