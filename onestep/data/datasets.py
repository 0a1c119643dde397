"""Bundled data sets as real-sample sources: scikit-learn's 8x8 digits (and a 16x16 variant)."""

from __future__ import annotations

import torch

from ..errors import OnestepError
from .sources import TensorSource

DATASETS = ("digits", "digits16")


def load_digits(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 handwritten digits in [-1, 1]: (N, 1, size, size), labels (N,).

    ``size=16`` upsamples bilinearly (the optional 16x16 variant).
    """
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, torch.tensor(data.target, dtype=torch.long)


def dataset_source(name: str, teacher) -> TensorSource:
    """A named data set as the teacher's real samples (labels where the teacher is class-conditional)."""
    if name not in DATASETS:
        raise OnestepError(f"config key 'data.dataset': unknown data set '{name}' (known: {', '.join(DATASETS)})")
    x, y = load_digits(size=16 if name == "digits16" else 8)
    if tuple(x.shape[1:]) != tuple(teacher.sample_shape):
        raise OnestepError(f"data set '{name}' has shape {tuple(x.shape[1:])} but the teacher makes "
                           f"{tuple(teacher.sample_shape)}")
    return TensorSource(x, y if teacher.num_classes else None)
