"""What a user can watch while a run trains: experiment trackers (TensorBoard, Weights & Biases,
through accelerate) and validation sample grids from fixed noise.

Every logged row of ``stats.jsonl`` also goes to the tracker; every ``train.sample_every``
iterations the generator (its EMA when kept) maps the same noise to a grid saved as
``<run>/samples/step-XXXXXXXX.png`` and sent to the tracker, so the grids show progress.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..core.images import make_grid, save_grid
from ..core.samplers import per_index_noise
from ..core.tensors import cycled_labels
from ..errors import OnestepError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
GRID_SEED = 20_251_129  # the validation grids' fixed noise


def check_tracker(report_to: str) -> None:
    """A one-line error naming the extra to install when the tracker's package is missing."""
    if report_to != "none" and importlib.util.find_spec(PACKAGES[report_to]) is None:
        raise OnestepError(f"config key 'train.report_to': {report_to} needs the '{PACKAGES[report_to]}' package; "
                           f"pip install 'onestep[{report_to}]' or set train.report_to=none")


def start(acc, report_to: str, config_dict: dict) -> None:
    if report_to != "none":
        flat = {k: v for k, v in _flatten(config_dict).items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers("onestep", config=flat)


def log_row(acc, report_to: str, row: dict, step: int) -> None:
    if report_to != "none":
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        values.update({f"logr_std/bin{i}": v for i, v in enumerate(row.get("logr_std", []))})
        values.update({f"disc_acc_heldout/bin{i}": v for i, v in enumerate(row.get("disc_acc_bins", []))})
        acc.log(values, step=step)


def log_image(acc, report_to: str, name: str, grid: np.ndarray, step: int) -> None:
    """``grid``: (H, W, C) uint8."""
    if report_to == "tensorboard":
        acc.get_tracker("tensorboard").writer.add_image(name, grid, step, dataformats="HWC")
    elif report_to == "wandb":
        import wandb

        acc.get_tracker("wandb").log({name: [wandb.Image(grid)]}, step=step)


class SampleGrid:
    """The same noise and labels every time: ``render(generator)`` -> images in [-1, 1]."""

    def __init__(self, teacher, count: int = 40):
        self.teacher = teacher
        per_row = 10
        if teacher.num_labels:
            count = min(count, 4 * teacher.num_labels)
            self.labels = cycled_labels(0, count, teacher.num_labels)
        else:
            self.labels = None
        self.noise = per_index_noise(GRID_SEED, 0, count, teacher.sample_shape)
        self.nrow = min(per_row, teacher.num_labels or per_row)

    @torch.no_grad()
    def render(self, generator, device) -> torch.Tensor:
        cond = self.teacher.cond_for(self.labels.to(device)) if self.labels is not None else None
        x = generator(self.noise.to(device), cond).float()
        return self.teacher.decode(x).cpu()

    def save(self, images: torch.Tensor, run_dir: Path, step: int) -> np.ndarray:
        save_grid(images, Path(run_dir) / "samples" / f"step-{step:08d}.png", nrow=self.nrow)
        return make_grid(images, self.nrow, upscale=max(1, 64 // images.shape[-1]))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
