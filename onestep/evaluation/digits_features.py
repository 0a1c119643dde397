"""The digits feature network: a small CNN classifier whose penultimate layer gives the
features of the Frechet distance on digits ("FD-digits"), as InceptionV3's pool layer
gives FID's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..core.io import load_safetensors
from ..errors import OnestepError
from ..resources import DIGITS_FEATURES as DEFAULT_WEIGHTS

FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """x (B, 1, H, W) in [-1, 1] (H = W = 8, or larger: pooled to 4x4) -> logits (B, 10).

    ``features(x)`` is the 128-d penultimate layer.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        h = F.silu(self.conv2(h))
        h = F.adaptive_avg_pool2d(h, 4).flatten(1)
        return F.silu(self.fc(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int = 3000, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, noise: float = 0.1) -> DigitsClassifier:
    """Adam on (x, y) with small input noise (robust features for imperfect samples)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen)
        xb = x[idx]
        xb = xb + noise * torch.randn(xb.shape, generator=gen)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise OnestepError(f"digits feature network not found at {path}; make it with "
                           "`python eval/train_digits_features.py`")
    model = DigitsClassifier()
    model.load_state_dict(load_safetensors(path)[0])
    return model.eval().requires_grad_(False)
