"""Frechet distance to a fixed reference set, with the features and extractor made once."""

from __future__ import annotations

import numpy as np
import torch

from .fidelity import feature_extractor, features_of, frechet_distance


class FDScorer:
    """``scorer(x)``: FD of images x (N, C, H, W) in [-1, 1] to the reference, in one extractor's features."""

    def __init__(self, reference: torch.Tensor, features: str = "digits", weights=None):
        self.extractor = feature_extractor(features, weights)
        self.ref = features_of(reference, extractor=self.extractor)

    def __call__(self, x: torch.Tensor) -> float:
        return frechet_distance(features_of(x, extractor=self.extractor), self.ref)

    def floor(self, reference: torch.Tensor, num_samples: int, seed: int = 0) -> float:
        """FD of ``num_samples`` reference images against the whole reference (the noise floor)."""
        idx = np.random.default_rng(seed).choice(len(reference), size=min(num_samples, len(reference)), replace=False)
        return self(reference[torch.from_numpy(idx)])
