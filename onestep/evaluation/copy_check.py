"""Memorisation check: how close generated samples lie to their nearest training sample.

Winning on FD by reproducing training digits is not a win. For the student's and the teacher's
samples (same noise), the L2 distance in pixel space to the nearest training image is compared;
a student that copies would sit systematically closer than its teacher does. Where the data set
has a held-out split, the same measure on real held-out images says where data that was never
trained on lies: nearer the training set than an under-fit teacher's samples, so a student that
moves toward the data also moves toward the training images without copying them. The
data-copying test (``data_copying``, Meehan et al. 2020) tells the two apart: it compares the
student's distances with those of held-out real images, per region of the data space.
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


def has_held_out(reference: torch.Tensor, train: torch.Tensor) -> bool:
    """Whether the evaluation set is a split of its own (Fashion-MNIST's test images), not the
    training set itself (the digits)."""
    return reference.shape != train.shape or not torch.equal(reference, train)


def with_held_out(report: dict, held_out: torch.Tensor, train: torch.Tensor, n: int, seed: int,
                  student: torch.Tensor | None = None, cells: int = 20) -> dict:
    """``report`` (``copy_report``'s) plus the same check on ``n`` real held-out images (N, ...),
    drawn without replacement with ``seed``: their median distance to the nearest training image
    and their share closer than the teacher's 5th percentile. With the ``student``'s samples
    (M, ...), also Meehan et al.'s data-copying test of them against those held-out images
    (``DataCopyingTest`` with ``cells``, key ``data_copying``)."""
    idx = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed))[:n]
    test = DataCopyingTest(held_out[idx], train, cells, seed) if student is not None else None
    distances = test.held_out_distances if test is not None else nearest_distances(held_out[idx], train)
    out = {**report, "held_out_median": distance_quantiles(distances)["median"],
           "held_out_below_teacher_p5": float((distances < report["teacher_p5"]).float().mean())}
    if test is not None:
        out["data_copying"] = test(student)
    return out


# ---------------------------------------------------------------- the data-copying test
# Meehan, Chaudhuri & Dasgupta, "A Non-Parametric Test to Detect Data-Copying in Generative
# Models", AISTATS 2020, Sec. 3-4. Three samples: the training set T, held-out real data P_n and
# generated samples Q_m. In each cell of a partition of the data space (k-means on T), the
# distances of P_n's and Q_m's points to their nearest training point of the same cell are
# compared by a Mann-Whitney U test, Z-scored under the null that both come from one law:
# Z_U << 0 where generated samples lie closer to the training set than real unseen data does
# (data-copying), Z_U >> 0 where they lie farther (under-fitting). C_T averages the cells' Z_U,
# weighted by P_n's share of each cell, over the cells holding more than a share tau of Q_m.
# Unlike a fixed distance threshold, it does not count moving toward the data as copying.


def mann_whitney_z(generated: torch.Tensor, held_out: torch.Tensor) -> float:
    """Z-scored Mann-Whitney U of distances ``generated`` (M,) against ``held_out`` (N,):
    U counts the pairs where the generated distance is the larger (ties count a half); the null
    mean M N / 2 (less 0.5, the continuity correction of the paper's code) and standard deviation
    sqrt(M N (M + N + 1) / 12). Negative: generated samples lie closer to the training set."""
    m, n = len(generated), len(held_out)
    joint = torch.cat([generated, held_out]).double()
    _, inverse, counts = joint.unique(sorted=True, return_inverse=True, return_counts=True)
    below = torch.cumsum(counts, 0) - counts  # values strictly smaller; ties share their mean rank
    ranks = below[inverse].double() + (counts[inverse].double() + 1) / 2
    u = float(ranks[:m].sum()) - m * (m + 1) / 2
    return (u - (m * n / 2 - 0.5)) / (m * n * (m + n + 1) / 12) ** 0.5


def kmeans_cells(train: torch.Tensor, k: int, seed: int = 0, iterations: int = 20) -> torch.Tensor:
    """Centroids (k, D) of Lloyd's k-means on the flattened training set (L, ...), initialised on
    k training points drawn with ``seed``; an emptied cell keeps its last centroid."""
    flat = train.flatten(1).double()
    centroids = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:k]].clone()
    for _ in range(iterations):
        cell = _nearest_index(flat, centroids)
        counts = torch.bincount(cell, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, cell, flat)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def _nearest_index(flat: torch.Tensor, centroids: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    return torch.cat([torch.cdist(flat[i:i + batch_size], centroids).argmin(1)
                      for i in range(0, len(flat), batch_size)])


class DataCopyingTest:
    """Meehan et al.'s test against one held-out sample (N, ...) and training set (L, ...): the
    k-means partition of the training set and the held-out side (nearest-training distances, in
    the whole space and within each cell, and each cell's held-out share) are computed once;
    calling it on generated samples (M, ...) scores them. Cells without training or held-out
    points are left out (small data sets; a cell without held-out points has weight 0 in C_T)."""

    def __init__(self, held_out: torch.Tensor, train: torch.Tensor, cells: int = 20, seed: int = 0):
        self.cells = cells
        flat_train = train.flatten(1).double()
        self.centroids = kmeans_cells(flat_train, cells, seed)
        cell_t = _nearest_index(flat_train, self.centroids)
        # the training set ordered by cell, so that each cell's images are one slice (a view)
        self.flat_train = flat_train[torch.argsort(cell_t, stable=True)]
        ends = torch.bincount(cell_t, minlength=cells).cumsum(0).tolist()
        cell_p = _nearest_index(held_out.flatten(1).double(), self.centroids)
        self.held_out_distances = nearest_distances(held_out, self.flat_train)
        self.reference = {}  # cell -> (its training images, held-out distances within it, its held-out share)
        for c, (start, end) in enumerate(zip([0, *ends[:-1]], ends)):
            t, p = self.flat_train[start:end], held_out[cell_p == c]
            if len(t) and len(p):
                self.reference[c] = (t, nearest_distances(p, t), len(p) / len(held_out))

    def __call__(self, generated: torch.Tensor, tau: float | None = None, distances: torch.Tensor | None = None) -> dict:
        """``c_t`` (the cell-weighted statistic), ``z_u`` (the same test on the whole space),
        ``cells`` (k), ``cells_used`` (those holding more than ``tau`` of the generated samples;
        default 20 / M) and ``per_cell`` (each used cell's Z_U); ``c_t`` is NaN where no cell is left.
        ``distances``: the generated samples' ``nearest_distances`` to the training set, where the
        caller has them already."""
        cell_q = _nearest_index(generated.flatten(1).double(), self.centroids)
        tau = 20 / len(generated) if tau is None else tau
        weights, scores = [], []
        for c, (train_in_cell, held_out_in_cell, weight) in self.reference.items():
            q = generated[cell_q == c]
            if len(q) / len(generated) <= tau:
                continue
            scores.append(mann_whitney_z(nearest_distances(q, train_in_cell), held_out_in_cell))
            weights.append(weight)
        if distances is None:
            distances = nearest_distances(generated, self.flat_train)
        z_u = mann_whitney_z(distances, self.held_out_distances)
        c_t = sum(w * z for w, z in zip(weights, scores)) / sum(weights) if weights else float("nan")
        return {"c_t": c_t, "z_u": z_u, "cells": self.cells, "cells_used": len(scores), "per_cell": scores}


def data_copying(generated: torch.Tensor, held_out: torch.Tensor, train: torch.Tensor, cells: int = 20,
                 tau: float | None = None, seed: int = 0) -> dict:
    """Meehan et al.'s test of generated samples (M, ...) against held-out real data (N, ...), both
    measured to the training set (L, ...), in one call (``DataCopyingTest`` to score several
    generated sets against the same held-out sample)."""
    return DataCopyingTest(held_out, train, cells, seed)(generated, tau)
