"""Teacher-vs-student evaluation in one feature space: FD per teacher NFE, the student's
1-NFE FD, and images per second for each (used by ``eval/nfe_sweep.py`` and ``onestep demo``).

Protocol (eval/PROTOCOL.md): ``num_samples`` images drawn with per-index seeds (labels
cycle over the classes), against the whole reference set; the teacher uses the EDM Heun
sampler (NFE = 2 steps - 1); the student is one network call.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .metrics import feature_extractor, features_of, frechet_distance
from .sampling import edm_sample, generate, heun_steps_for_nfe, per_index_noise


def class_labels(num_samples: int, num_classes: int) -> torch.Tensor | None:
    """Labels cycling over the classes (None for unconditional models)."""
    if not num_classes:
        return None
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def teacher_samples(teacher, schedule, nfe: int, num_samples: int, seed: int, batch_size: int = 1000,
                    device="cpu") -> tuple[torch.Tensor, float]:
    """Heun samples at ``nfe`` evaluations (NFE 1 = one Euler step); returns (x, images/s)."""
    labels = class_labels(num_samples, teacher.num_classes)
    steps = heun_steps_for_nfe(nfe)
    out, seconds = [], 0.0
    for start in range(0, num_samples, batch_size):
        k = min(batch_size, num_samples - start)
        z = per_index_noise(seed, start, k, teacher.sample_shape).to(device)
        cond = labels[start:start + k].to(device) if labels is not None else None
        t0 = time.perf_counter()
        out.append(edm_sample(teacher.denoise, z, schedule, steps, cond, heun=nfe > 1).cpu())
        seconds += time.perf_counter() - t0
    return torch.cat(out), num_samples / seconds


@torch.no_grad()
def student_samples(generator, num_samples: int, seed: int, num_classes: int, batch_size: int = 1000,
                    device="cpu") -> tuple[torch.Tensor, float]:
    """One-step samples (per-index seeds); returns (x, images/s)."""
    labels = class_labels(num_samples, num_classes)
    cond_fn = (lambda s, k: labels[s:s + k].to(device)) if labels is not None else None
    shape = tuple(generator.network.sample_shape)
    t0 = time.perf_counter()
    x = generate(generator, num_samples, seed, shape, cond_fn=cond_fn, batch_size=batch_size, device=device)
    return x, num_samples / (time.perf_counter() - t0)


class FDScorer:
    """Frechet distance to a fixed reference set, its features and the extractor made once."""

    def __init__(self, reference: torch.Tensor, features: str = "digits", weights=None):
        self.extractor = feature_extractor(features, weights)
        self.ref = features_of(reference, extractor=self.extractor)

    def __call__(self, x: torch.Tensor) -> float:
        return frechet_distance(features_of(x, extractor=self.extractor), self.ref)

    def floor(self, reference: torch.Tensor, num_samples: int, seed: int = 0) -> float:
        """FD of ``num_samples`` reference images against the whole reference (the noise floor)."""
        idx = np.random.default_rng(seed).choice(len(reference), size=min(num_samples, len(reference)), replace=False)
        return self(reference[torch.from_numpy(idx)])


def nfe_sweep(teacher, schedule, scorer: FDScorer, nfes=(1, 3, 7, 15, 31, 63), num_samples: int = 1000,
              seed: int = 0, device="cpu", keep_samples: bool = False) -> list[dict]:
    """Teacher FD and images/s at each NFE."""
    rows = []
    for nfe in nfes:
        x, ips = teacher_samples(teacher, schedule, nfe, num_samples, seed, device=device)
        row = {"nfe": nfe, "fd": scorer(x), "images_per_s": ips}
        if keep_samples:
            row["samples"] = x
        rows.append(row)
    return rows


def save_fd_plot(sweep: list[dict], student: dict | None, path, title: str = "FD-digits vs NFE") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["nfe"] for r in sweep], [r["fd"] for r in sweep], "o-", label="teacher (Heun)")
    if student is not None:
        ax.plot([1], [student["fd"]], "r*", markersize=14, label=f"one-step student ({student.get('objective', '')})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("Frechet distance (digits features)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
