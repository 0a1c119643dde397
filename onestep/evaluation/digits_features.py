"""The digits feature network: a small CNN classifier whose penultimate layer gives the
features of the Frechet distance on digits ("FD-digits"), as InceptionV3's pool layer
gives FID's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..resources import DIGITS_FEATURES as DEFAULT_WEIGHTS
from .classifier_training import load_weights

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


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    return load_weights(DigitsClassifier, Path(path) if path is not None else DEFAULT_WEIGHTS, "digits feature network", "eval/train_digits_features.py")
