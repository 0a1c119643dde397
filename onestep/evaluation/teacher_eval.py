"""What a benchmark needs of its teacher, measured once and stored next to the teacher's weights
(``<teacher>/evaluation.json``, ``<teacher>/samples.png``), so that a benchmark run never redoes it:

1. the FD by NFE (Heun) on ``sweep_samples`` images at evaluation seed 0, and the best NFE;
2. at that NFE, the FD of ``num_samples`` images at each evaluation seed;
3. the copy-check distances (nearest training image, L2 in pixel space) of the seed-0 samples;
4. a sample grid, one row per class.

All from the weights as stored (an fp16 teacher is evaluated from its fp16 weights, upcast).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.images import save_grid
from ..core.io import atomic_write_text
from ..core.samplers import edm_sample, heun_steps_for_nfe, per_index_noise
from ..errors import OnestepError
from .copy_check import distance_quantiles, nearest_distances
from .fd import FDScorer
from .nfe import nfe_sweep, teacher_samples_at

EVALUATION_FILE = "evaluation.json"
GRID_FILE = "samples.png"


@dataclass(frozen=True)
class TeacherProtocol:
    """How a teacher is scored (eval/PROTOCOL.md): the sweep, then the best NFE at more samples."""

    features: str  # the FD feature network (evaluation.fidelity)
    dataset: str  # the named data set: FD against its test split, copy check against its train split
    sweep_nfes: tuple[int, ...] = (3, 7, 15, 31, 63)
    sweep_samples: int = 2000
    num_samples: int = 5000
    seeds: tuple[int, ...] = (0, 1, 2)


def grid_labels(num_classes: int, per_class: int = 10) -> torch.Tensor:
    """Labels for a grid with one row per class: (num_classes * per_class,)."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def evaluate_teacher(teacher, schedule, protocol: TeacherProtocol, reference: torch.Tensor, train: torch.Tensor,
                     log=print) -> dict:
    """The measurements of the module docstring (1-3) as a JSON-able dict."""
    scorer = FDScorer(reference, protocol.features)
    t0 = time.perf_counter()
    log(f"teacher sweep: NFE {', '.join(map(str, protocol.sweep_nfes))} on {protocol.sweep_samples} samples ...")
    sweep = nfe_sweep(teacher, schedule, scorer, protocol.sweep_nfes, protocol.sweep_samples, seed=0)
    for r in sweep:
        log(f"  NFE {r['nfe']:3d}: FD {r['fd']:.3f} ({r['images_per_s']:.0f} images/s)")
    best = min(sweep, key=lambda r: r["fd"])
    fd, nearest, speed = {}, None, []
    for seed in protocol.seeds:
        x, ips = teacher_samples_at(teacher, schedule, best["nfe"], protocol.num_samples, seed)
        fd[str(seed)] = scorer(x)
        speed.append(ips)
        log(f"  best NFE {best['nfe']}, seed {seed}: FD {fd[str(seed)]:.3f} on {protocol.num_samples} samples")
        if nearest is None:
            nearest = distance_quantiles(nearest_distances(x, train))
    return {"protocol": asdict(protocol), "sweep": sweep, "best_nfe": best["nfe"], "fd": fd,
            "images_per_s": sum(speed) / len(speed), "nearest_training_distance": nearest,
            "dtype": str(next(teacher.network.parameters()).dtype).replace("torch.", ""),
            "seconds": round(time.perf_counter() - t0, 1)}


def save_teacher_grid(teacher, schedule, nfe: int, path, seed: int = 1) -> None:
    """One row per class (10 samples each) at ``nfe``, from per-index noise of ``seed``."""
    labels = grid_labels(teacher.num_classes) if teacher.num_classes else None
    n = len(labels) if labels is not None else 100
    z = per_index_noise(seed, 0, n, teacher.sample_shape)
    with torch.no_grad():
        save_grid(edm_sample(teacher.denoise, z, schedule, heun_steps_for_nfe(nfe), labels), path, nrow=10)


def write_evaluation(directory, result: dict) -> Path:
    path = Path(directory) / EVALUATION_FILE
    atomic_write_text(json.dumps(result, indent=1) + "\n", path)
    return path


def read_evaluation(directory, protocol: TeacherProtocol) -> dict:
    """The stored evaluation of the teacher at ``directory``; one-line error if absent or made
    under another protocol."""
    path = Path(directory) / EVALUATION_FILE
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise OnestepError(f"{path} not found: evaluate the teacher once with `python eval/teacher_eval.py "
                           f"--teacher {directory}`") from None
    except ValueError:
        raise OnestepError(f"{path} is not valid JSON; evaluate the teacher again (eval/teacher_eval.py)") from None
    stored = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(protocol).items()}
    if result.get("protocol") != stored:
        raise OnestepError(f"{path} was made under another protocol ({result.get('protocol')}); evaluate the "
                           f"teacher again (eval/teacher_eval.py)")
    return result
