"""Training and scoring the classifiers whose penultimate layers are the feature networks of
FD-digits and FD-fashion."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..core.io import load_safetensors
from ..errors import OnestepError


def train_classifier(x: torch.Tensor, y: torch.Tensor, model_class: type[nn.Module], steps: int = 3000, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, noise: float = 0.1, flip: bool = False, progress=None) -> nn.Module:
    """Adam with a cosine schedule on (x, y) with small input noise (robust features for imperfect
    samples) and, with ``flip``, random horizontal flips. ``progress(step, loss)``: a callback."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb = x[idx]
        if flip:
            mirrored = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(mirrored[:, None, None, None], xb.flip(-1), xb)
        xb = xb + noise * torch.randn(xb.shape, generator=gen)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, loss.item())
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def load_weights(model_class: type[nn.Module], path: Path, what: str, script: str) -> nn.Module:
    """A frozen ``model_class`` with the safetensors weights at ``path`` (one-line error naming the
    script that makes them when absent)."""
    if not Path(path).is_file():
        raise OnestepError(f"{what} not found at {path}; make it with `python {script}`")
    model = model_class()
    model.load_state_dict(load_safetensors(path)[0])
    return model.eval().requires_grad_(False)
