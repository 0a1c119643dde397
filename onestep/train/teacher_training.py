"""``onestep train-teacher``: an EDM-loss UNet on a bundled data set, saved as a pipeline directory."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import dump_yaml
from ..core.io import write_pipeline_dir
from ..core.schedule import ScheduleConfig
from ..core.schema import key
from ..data.datasets import load_digits
from ..nets.diffusers_unet import DiffusersDenoiser, parameterization_of
from ..portable.pipeline import EDMPipeline
from .denoiser_fit import train_denoiser


@dataclass
class UNetConfig:
    """A diffusers ``UNet2DModel`` (see its documentation for each field)."""

    sample_size: int = key(8, ge=1)
    in_channels: int = key(1, ge=1)
    out_channels: int = key(1, ge=1)
    block_out_channels: list[int] = key(default_factory=lambda: [32, 64], ge=1, nonempty=True)
    layers_per_block: int = key(1, ge=1)
    down_block_types: list[str] = key(default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D"], nonempty=True)
    up_block_types: list[str] = key(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D"], nonempty=True)
    num_class_embeds: int | None = key(10, ge=1)
    norm_num_groups: int = key(8, ge=1)
    attention_head_dim: int = key(8, ge=1)


@dataclass
class TeacherTrainingConfig:
    """``onestep train-teacher``: an EDM-loss UNet on a bundled data set, saved as a pipeline."""

    dataset: Literal["digits", "digits16"] = key("digits", "training data")
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction_type: Literal["epsilon", "v_prediction"] = key("epsilon", "the UNet's output")
    steps: int = key(4000, "Adam steps", ge=1)
    batch_size: int = key(64, "batch", ge=1)
    lr: float = key(2e-4, "learning rate", gt=0)
    ema_halflife_steps: float = key(500.0, "EMA half-life in steps (0: no EMA)", ge=0)
    seed: int = key(0, "seed", ge=0)
    progress: bool = key(True, "progress bar")


def train_teacher(cfg: TeacherTrainingConfig, output, progress: bool = True) -> dict:
    """Train a class-conditional UNet2DModel under the EDM loss on a bundled data set and save
    it as a diffusers pipeline directory (``EDMPipeline``: unet + EDMEulerScheduler).

    Returns {"seconds", "final_loss", "parameters", "steps"}.
    """
    from diffusers import EDMEulerScheduler, UNet2DModel

    t0 = time.perf_counter()
    x, y = load_digits(size=16 if cfg.dataset == "digits16" else 8)
    unet_kwargs = dataclasses.asdict(cfg.unet)
    unet_kwargs["sample_size"] = x.shape[-1]
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        unet = UNet2DModel(**unet_kwargs)
    s = cfg.schedule
    scheduler = EDMEulerScheduler(sigma_min=s.sigma_min, sigma_max=s.sigma_max, sigma_data=s.sigma_data,
                                  rho=s.rho, prediction_type=cfg.prediction_type)
    network = DiffusersDenoiser(unet, parameterization_of(scheduler))
    labelled = unet_kwargs.get("num_class_embeds")

    def draw(n, rng):
        idx = torch.randint(0, len(x), (n,), generator=rng)
        return x[idx], (y[idx] if labelled else None)

    trained, losses = train_denoiser(network, draw, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                     schedule=s, seed=cfg.seed, ema_halflife_steps=cfg.ema_halflife_steps,
                                     progress=progress, desc="train teacher")
    seconds = time.perf_counter() - t0
    info = {"seconds": round(seconds, 1), "final_loss": sum(losses[-100:]) / min(100, len(losses)),
            "parameters": sum(p.numel() for p in unet.parameters()), "steps": cfg.steps}

    def records(tmp: Path) -> None:
        (tmp / "training.json").write_text(json.dumps(info, indent=1))
        (tmp / "training_config.yaml").write_text(dump_yaml(cfg))

    write_pipeline_dir(EDMPipeline(unet=trained.unet, scheduler=scheduler), output, records)
    return info
