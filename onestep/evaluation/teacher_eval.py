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
from ..core.modules import fingerprint
from ..core.samplers import edm_sample, heun_steps_for_nfe, per_index_noise
from ..errors import OnestepError
from .copy_check import distance_quantiles, nearest_distances
from .fd import FDScorer
from .nfe import nfe_sweep, teacher_samples_at

EVALUATION_FILE = "evaluation.json"
PARTIAL_FILE = "evaluation.partial.json"  # the measurements of an evaluation still under way
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
                     log=print, partial: Path | None = None) -> dict:
    """The measurements of the module docstring (1-3) as a JSON-able dict.

    ``partial``: a file where each finished measurement (a sweep point, a seed's FD, the copy
    check) is kept as it completes, so that an interrupted evaluation resumes where it stopped;
    it is used only when it was made under the same protocol for the same weights, and removed
    once the result is complete."""
    scorer = FDScorer(reference, protocol.features)
    t0 = time.perf_counter()
    # the weights' fingerprint to 10 significant digits (a float64 sum's last bits may vary by device)
    key = {"protocol": _stored(protocol), "weights": f"{fingerprint(teacher.network):.10e}"}
    done = _read_partial(partial, key, log)
    seconds0 = done.get("seconds", 0.0)

    def keep():
        if partial is not None:
            done["seconds"] = round(seconds0 + time.perf_counter() - t0, 1)
            atomic_write_text(json.dumps({**done, "key": key}) + "\n", partial)

    log(f"teacher sweep: NFE {', '.join(map(str, protocol.sweep_nfes))} on {protocol.sweep_samples} samples ...")
    sweep = done.setdefault("sweep", {})
    for nfe in protocol.sweep_nfes:
        if str(nfe) not in sweep:
            sweep[str(nfe)] = nfe_sweep(teacher, schedule, scorer, (nfe,), protocol.sweep_samples, seed=0)[0]
            keep()
        r = sweep[str(nfe)]
        log(f"  NFE {r['nfe']:3d}: FD {r['fd']:.3f} ({r['images_per_s']:.0f} images/s)")
    rows = [sweep[str(nfe)] for nfe in protocol.sweep_nfes]
    best = min(rows, key=lambda r: r["fd"])
    fd, speed = done.setdefault("fd", {}), done.setdefault("speed", {})
    for seed in protocol.seeds:
        if str(seed) not in fd or (done.get("nearest") is None and seed == protocol.seeds[0]):
            x, speed[str(seed)] = teacher_samples_at(teacher, schedule, best["nfe"], protocol.num_samples, seed)
            fd[str(seed)] = scorer(x)
            if done.get("nearest") is None:
                done["nearest"] = distance_quantiles(nearest_distances(x, train))
            keep()
        log(f"  best NFE {best['nfe']}, seed {seed}: FD {fd[str(seed)]:.3f} on {protocol.num_samples} samples")
    result = {"protocol": asdict(protocol), "sweep": rows, "best_nfe": best["nfe"],
              "fd": {str(s): fd[str(s)] for s in protocol.seeds},
              "images_per_s": sum(speed[str(s)] for s in protocol.seeds) / len(protocol.seeds),
              "nearest_training_distance": done["nearest"],
              "dtype": str(next(teacher.network.parameters()).dtype).replace("torch.", ""),
              "seconds": round(seconds0 + time.perf_counter() - t0, 1)}
    return result


def _stored(protocol: TeacherProtocol) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(protocol).items()}


def _read_partial(partial: Path | None, key: dict, log) -> dict:
    """The measurements an interrupted evaluation kept, if made under ``key``; else nothing."""
    if partial is None or not Path(partial).is_file():
        return {}
    try:
        done = json.loads(Path(partial).read_text())
    except ValueError:
        return {}
    if not isinstance(done, dict) or done.pop("key", None) != key:
        log(f"ignoring {partial}: made under another protocol or for other weights")
        return {}
    kept = len(done.get("sweep", {})) + len(done.get("fd", {}))
    log(f"resuming from {partial} ({kept} measurements kept, {done.get('seconds', 0):.0f} s)")
    return done


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
    if result.get("protocol") != _stored(protocol):
        raise OnestepError(f"{path} was made under another protocol ({result.get('protocol')}); evaluate the "
                           f"teacher again (eval/teacher_eval.py)")
    return result
