"""The Fashion-MNIST feature network: a small CNN classifier trained on the 60,000 training
images only; its 128-d penultimate layer gives the features of the Frechet distance on
Fashion-MNIST ("FD-fashion"), as InceptionV3's pool layer gives FID's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..resources import FASHION_FEATURES as DEFAULT_WEIGHTS
from .classifier_training import load_weights

FEATURE_DIM = 128


class FashionClassifier(nn.Module):
    """x (B, 1, 28, 28) in [-1, 1] -> logits (B, 10); ``features(x)`` is the 128-d penultimate layer.

    Three 3x3 conv layers (32, 64, 128 channels at 28, 14, 7), each after the first behind a 2x2
    max-pool, then one hidden layer on the flattened 7x7 maps.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 7 * 7, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        h = F.silu(self.conv2(F.max_pool2d(h, 2)))
        h = F.silu(self.conv3(F.max_pool2d(h, 2)))
        h = h.flatten(1)
        return F.silu(self.fc(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_classifier(path: str | Path | None = None) -> FashionClassifier:
    return load_weights(FashionClassifier, Path(path) if path is not None else DEFAULT_WEIGHTS, "Fashion-MNIST feature network", "eval/train_fashion_features.py")
