"""The layout of a run directory: one place that names its files.

```
<run>/config.yaml                  the resolved config
<run>/network.json                 the denoiser's spec (rebuilds generator / fake score without the teacher)
<run>/stats.jsonl                  one JSON row per logging interval
<run>/checkpoints/step-XXXXXXXX.safetensors
<run>/teacher_cache.safetensors    teacher ODE samples and their noise (data-free "real" side, regression pairs)
<run>/teacher_network.safetensors  the MLP fitted to an analytic teacher
<run>/.onestep.lock                held by the process distilling into the run
```
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

from ..errors import OnestepError
from .io import DIGEST_KEY, load_safetensors, safetensors_header

CONFIG_FILE = "config.yaml"
NETWORK_FILE = "network.json"
STATS_FILE = "stats.jsonl"
CKPT_DIR = "checkpoints"
CACHE_FILE = "teacher_cache.safetensors"
TEACHER_NETWORK_FILE = "teacher_network.safetensors"
LOCK_FILE = ".onestep.lock"
_PATTERN = re.compile(r"^step-(\d{8})\.safetensors$")
_TMP = re.compile(r"^\..+\.\d+\.tmp$")  # core.io's temporary names
# stats.jsonl's "logr_std": the spread of the discriminator's log-ratio in these sigma bins (edges;
# the first bin starts at 0, the last is open)
SPREAD_EDGES = (0.05, 0.2, 1.0, 5.0)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step-{step:08d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        m = _PATTERN.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


CHECKPOINT_FORMATS = ("onestep-checkpoint-1", "onestep-checkpoint-2", "onestep-checkpoint-3")


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable onestep checkpoint (None if it is sound): unreadable, torn,
    without onestep's metadata, or (format 3 on) tensors that differ from their recorded digest."""
    try:
        _, meta = safetensors_header(path)
        if DIGEST_KEY in meta:
            load_safetensors(path)  # reads every tensor and checks the digest
    except OnestepError as exc:
        return str(exc)
    try:
        fmt = json.loads(meta.get("format", "null"))
        json.loads(meta["config"]), json.loads(meta["step"]), json.loads(meta["optimizers"])
    except (KeyError, ValueError):
        return f"{path} is not an onestep checkpoint (its metadata lacks the run's config, step or optimizer state)"
    if fmt not in CHECKPOINT_FORMATS:
        return f"{path} has an unknown checkpoint format {fmt!r} (this onestep reads {', '.join(CHECKPOINT_FORMATS)})"
    return None


def latest_valid_checkpoint(run_dir: Path, problem_of=checkpoint_problem) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest sound checkpoint, and the newer ones skipped with the reason (``problem_of``:
    why a file is not a sound checkpoint of this kind, or None)."""
    skipped = []
    for _, path in reversed(list_checkpoints(run_dir)):
        problem = problem_of(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run directory (``fcntl.flock`` on ``<run>/.onestep.lock``) for the
    life of one distillation: a second process on the same directory is refused instead of
    interleaving checkpoints and logs. The kernel drops the lock when the process ends."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._fh = None

    def acquire(self) -> RunLock:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise OnestepError(f"{self.path.parent} is in use by another onestep process (pid {holder}); wait for "
                               f"it to finish or choose another --output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        remove_stale_temporaries(self.path.parent)
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


def is_temporary(name: str) -> bool:
    """Is ``name`` one of core.io's temporary files (``.<name>.<pid>.tmp``)?"""
    return bool(_TMP.match(name))


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete our own temporary files (``.<name>.<pid>.tmp``) left by killed writes; call with the
    run's lock held, when no other writer can be active. Returns what was removed."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CKPT_DIR):
        if folder.is_dir():
            for f in folder.iterdir():
                if is_temporary(f.name) and f.is_file():
                    f.unlink(missing_ok=True)
                    removed.append(f)
    return removed
