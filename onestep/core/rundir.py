"""The layout of a run directory: one place that names its files.

```
<run>/config.yaml                  the resolved config
<run>/network.json                 the denoiser's spec (rebuilds generator / fake score without the teacher)
<run>/stats.jsonl                  one JSON row per logging interval
<run>/checkpoints/step-XXXXXXXX.safetensors
<run>/teacher_cache.safetensors    teacher ODE samples and their noise (data-free "real" side, regression pairs)
<run>/teacher_network.safetensors  the MLP fitted to an analytic teacher
```
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.yaml"
NETWORK_FILE = "network.json"
STATS_FILE = "stats.jsonl"
CKPT_DIR = "checkpoints"
CACHE_FILE = "teacher_cache.safetensors"
TEACHER_NETWORK_FILE = "teacher_network.safetensors"
_PATTERN = re.compile(r"^step-(\d{8})\.safetensors$")


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


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)
