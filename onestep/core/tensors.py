"""Tensor helpers shared by every layer: broadcasting, reductions, conditioning batches."""

from __future__ import annotations

import torch


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def sum_dims(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the batch: (B, ...) -> (B,)."""
    return t.flatten(1).sum(1)


# Conditioning is a "batch tree": None, a tensor whose first dimension is the batch (class
# labels (B,), prompt embeddings (B, L, D)), or a tuple / dict of such tensors (e.g. SD3's
# {"encoder_hidden_states", "pooled_projections"}). These helpers apply one operation to every
# tensor of a tree.


def map_cond(fn, cond):
    """``fn`` applied to every tensor of a conditioning tree (other leaves unchanged)."""
    if cond is None:
        return None
    if torch.is_tensor(cond):
        return fn(cond)
    if isinstance(cond, dict):
        return {k: map_cond(fn, v) for k, v in cond.items()}
    return type(cond)(map_cond(fn, c) for c in cond)


def cond_len(cond) -> int:
    """The batch size of a conditioning tree."""
    if torch.is_tensor(cond):
        return len(cond)
    first = next(iter(cond.values() if isinstance(cond, dict) else cond))
    return cond_len(first)


def cat_cond(a, b):
    """Two batches' conditioning stacked along the batch (trees of the same structure, or None)."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot mix conditional and unconditional batches")
    if torch.is_tensor(a):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: cat_cond(a[k], b[k]) for k in a}
    return type(a)(cat_cond(x, y) if torch.is_tensor(x) or isinstance(x, (dict, tuple)) else x for x, y in zip(a, b))


def to_device(cond, device):
    """Conditioning on ``device``."""
    return map_cond(lambda t: t.to(device), cond)


def take_rows(cond, idx):
    """Rows ``idx`` (an index tensor or a slice) of every tensor of a conditioning tree."""
    return map_cond(lambda t: t[idx.to(t.device) if torch.is_tensor(idx) else idx], cond)


def cycled_labels(start: int, count: int, labels) -> torch.Tensor:
    """Labels of indices ``start .. start + count - 1`` cycling over ``labels`` (a list, a
    tensor, or a class count ``n`` meaning ``0 .. n - 1``): index ``i`` gets ``labels[i % len]``."""
    table = torch.arange(labels) if isinstance(labels, int) else torch.as_tensor(labels, dtype=torch.long)
    return table[torch.arange(start, start + count) % len(table)]
