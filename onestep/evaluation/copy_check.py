"""Memorisation check: how close generated samples lie to their nearest training sample.

Winning on FD by reproducing training digits is not a win. For the student's and the teacher's
samples (same noise), the L2 distance in pixel space to the nearest training image is compared;
a student that copies would sit systematically closer than its teacher does. Where the data set
has a held-out split, the same measure on real held-out images says where data that was never
trained on lies: nearer the training set than an under-fit teacher's samples, so a student that
moves toward the data also moves toward the training images without copying them.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def nearest_distances(x: torch.Tensor, train: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """L2 distance of each sample (N, ...) to its nearest training sample (M, ...); (N,)."""
    flat = train.flatten(1).double()
    out = [torch.cdist(x[i:i + batch_size].flatten(1).double(), flat).min(1).values
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).float()


def distance_quantiles(distances: torch.Tensor) -> dict:
    """{"median", "p5"} of nearest-training-sample distances (N,)."""
    p5, median = torch.quantile(distances, torch.tensor([0.05, 0.5], dtype=distances.dtype)).tolist()
    return {"median": median, "p5": p5}


def copy_report(student: torch.Tensor, teacher: torch.Tensor | dict, train: torch.Tensor) -> dict:
    """Median and 5th percentile of the nearest-training-sample distance, for student and teacher
    samples, and the fraction of student samples closer to a training sample than the teacher's
    5th percentile (about 0.05 when the student copies no more than its teacher).

    ``teacher``: its samples (N, ...), or the ``distance_quantiles`` of them measured before
    (a teacher's stored evaluation)."""
    ds = nearest_distances(student, train)
    t = teacher if isinstance(teacher, dict) else distance_quantiles(nearest_distances(teacher, train))
    s = distance_quantiles(ds)
    return {"student_median": s["median"], "student_p5": s["p5"], "teacher_median": t["median"],
            "teacher_p5": t["p5"], "student_below_teacher_p5": float((ds < t["p5"]).float().mean())}


def with_held_out(report: dict, held_out: torch.Tensor, train: torch.Tensor, n: int, seed: int) -> dict:
    """``report`` (``copy_report``'s) plus the same check on ``n`` real held-out images (N, ...),
    drawn without replacement with ``seed``: their median distance to the nearest training image
    and their share closer than the teacher's 5th percentile."""
    idx = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed))[:n]
    distances = nearest_distances(held_out[idx], train)
    return {**report, "held_out_median": distance_quantiles(distances)["median"],
            "held_out_below_teacher_p5": float((distances < report["teacher_p5"]).float().mean())}
