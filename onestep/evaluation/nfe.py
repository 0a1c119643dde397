"""Teacher-vs-student evaluation in one feature space: FD per teacher NFE, the student's
1-NFE FD, and images per second for each (used by ``eval/nfe_sweep.py`` and ``onestep demo``).

Protocol (eval/PROTOCOL.md): ``num_samples`` images drawn with per-index seeds (labels
cycle over the classes), against the whole reference set; the teacher uses the EDM Heun
sampler (NFE = 2 steps - 1); the student is one network call.
"""

from __future__ import annotations

import time

import torch

from ..core.samplers import generate, heun_steps_for_nfe, per_index_noise
from ..core.tensors import cycled_labels
from ..sampling import teacher_samples
from .fd import FDScorer


def class_labels(num_samples: int, num_classes: int) -> torch.Tensor | None:
    """Labels cycling over the classes (None for unconditional models)."""
    return cycled_labels(0, num_samples, num_classes) if num_classes else None


@torch.no_grad()
def teacher_samples_at(teacher, schedule, nfe: int, num_samples: int, seed: int, batch_size: int = 1000,
                       device="cpu") -> tuple[torch.Tensor, float]:
    """Heun samples at ``nfe`` evaluations (NFE 1 = one Euler step), per-index seeds; returns (x, images/s)."""
    noise = per_index_noise(seed, 0, num_samples, teacher.sample_shape)
    t0 = time.perf_counter()
    x = teacher_samples(teacher, noise, class_labels(num_samples, teacher.num_classes), schedule,
                        heun_steps_for_nfe(nfe), batch_size, heun=nfe > 1, device=device)
    return x, num_samples / (time.perf_counter() - t0)


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


def nfe_sweep(teacher, schedule, scorer: FDScorer, nfes=(1, 3, 7, 15, 31, 63), num_samples: int = 1000,
              seed: int = 0, device="cpu", keep_samples: bool = False) -> list[dict]:
    """Teacher FD and images/s at each NFE."""
    rows = []
    for nfe in nfes:
        x, ips = teacher_samples_at(teacher, schedule, nfe, num_samples, seed, device=device)
        row = {"nfe": nfe, "fd": scorer(x), "images_per_s": ips}
        if keep_samples:
            row["samples"] = x
        rows.append(row)
    return rows
