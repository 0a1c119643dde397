"""Tensor helpers shared by every layer: broadcasting, reductions, conditioning batches."""

from __future__ import annotations

import torch


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def sum_dims(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the batch: (B, ...) -> (B,)."""
    return t.flatten(1).sum(1)


def cat_cond(a, b):
    """Two batches' conditioning stacked along the batch: labels (B,), embeddings (B, L, D),
    tuples of them, or None."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot mix conditional and unconditional batches")
    if torch.is_tensor(a):
        return torch.cat([a, b])
    return type(a)(torch.cat([x, y]) if torch.is_tensor(x) else x for x, y in zip(a, b))


def to_device(cond, device):
    """Conditioning (tensor, tuple of tensors, or None) on ``device``."""
    if cond is None:
        return None
    if torch.is_tensor(cond):
        return cond.to(device)
    return type(cond)(c.to(device) if torch.is_tensor(c) else c for c in cond)


def cycled_labels(start: int, count: int, labels) -> torch.Tensor:
    """Labels of indices ``start .. start + count - 1`` cycling over ``labels`` (a list, a
    tensor, or a class count ``n`` meaning ``0 .. n - 1``): index ``i`` gets ``labels[i % len]``."""
    table = torch.arange(labels) if isinstance(labels, int) else torch.as_tensor(labels, dtype=torch.long)
    return table[torch.arange(start, start + count) % len(table)]
