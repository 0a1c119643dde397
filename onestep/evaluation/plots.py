"""Figures of a run: FD against NFE, and the discriminator's training curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.rundir import SPREAD_EDGES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fd_plot(sweep: list[dict], student: dict | None, path, title: str = "FD-digits vs NFE") -> None:
    plt = _pyplot()
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


def read_stats(path) -> list[dict]:
    """The rows of a run's stats.jsonl (torn lines skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def save_discriminator_plot(rows: list[dict], path) -> bool:
    """Held-out accuracy and the log-ratio spread per sigma bin over training; False (nothing
    written) when the run had no discriminator."""
    rows = [r for r in rows if "disc_acc_heldout" in r]
    if not rows:
        return False
    plt = _pyplot()
    steps = [r["step"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(steps, [r["disc_acc_heldout"] for r in rows], "o-", label="held out")
    if "disc_acc" in rows[0]:
        a1.plot(steps, [r["disc_acc"] for r in rows], ".--", alpha=0.6, label="training batch")
    edges = (0.0, *SPREAD_EDGES, math.inf)
    labels = [f"sigma {edges[k]:g}-{edges[k + 1]:g}" if math.isfinite(edges[k + 1]) else f"sigma > {edges[k]:g}"
              for k in range(len(edges) - 1)]
    if "disc_acc_bins" in rows[0]:
        for k, label in enumerate(labels):
            a1.plot(steps, [r["disc_acc_bins"][k] for r in rows], "-", lw=0.9, alpha=0.8, label=f"held out, {label}")
    a1.axhline(0.5, color="gray", lw=0.8)
    a1.set(xlabel="iteration", ylabel="accuracy (real vs generator)", title="discriminator")
    a1.legend(fontsize=6)
    for k, label in enumerate(labels):
        a2.plot(steps, [r["logr_std"][k] for r in rows], ".-", label=label)
    a2.set(xlabel="iteration", ylabel="std of log r (generator samples)", title="learned log-ratio spread")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
