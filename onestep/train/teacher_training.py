"""``onestep train-teacher``: an EDM-loss UNet on a named data set, saved as a pipeline directory.

Training is resumable: every ``checkpoint_every`` steps the whole state (UNet, EMA, Adam, the
random stream, the step and the seconds spent) goes to ``<work>/checkpoints/step-XXXXXXXX.safetensors``
and a row of ``<work>/log.jsonl``; ``--resume`` continues from the newest sound checkpoint with
the same weights a run without the restart gives. ``steps`` may be raised on resume (train
longer); a resume at or past ``steps`` only writes the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..config import dump_yaml, to_dict
from ..core.io import (
    atomic_save,
    atomic_write_text,
    load_safetensors,
    safetensors_header,
    write_pipeline_dir,
)
from ..core.rundir import (
    RunLock,
    checkpoint_path,
    latest_valid_checkpoint,
    list_checkpoints,
    prune_checkpoints,
)
from ..core.schedule import ScheduleConfig
from ..core.schema import key
from ..data.datasets import load_named
from ..errors import OnestepError, OnestepWarning
from ..nets.diffusers_unet import DiffusersDenoiser, parameterization_of
from ..portable.pipeline import EDMPipeline
from ..teachers.fit import DenoiserFit
from .state import truncate_stats

FORMAT = "onestep-teacher-checkpoint-1"
LOG_FILE = "log.jsonl"
# keys a resume may change (how long and how it reports), every other one must match the checkpoint
RESUMABLE = ("steps", "progress", "checkpoint_every", "keep_checkpoints", "log_every", "save_dtype", "data_root")


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
    """``onestep train-teacher``: an EDM-loss UNet on a named data set, saved as a pipeline."""

    dataset: Literal["digits", "digits16", "fashion-mnist"] = key("digits", "training data (its train split)")
    data_root: str | None = key(None, "fashion-mnist: where its files are (else $ONESTEP_DATA, the user cache, "
                                      "/usr/share/datasets/fashion-mnist)", nonempty=True)
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction_type: Literal["epsilon", "v_prediction"] = key("epsilon", "the UNet's output")
    steps: int = key(4000, "Adam steps (may be raised on --resume)", ge=1)
    batch_size: int = key(64, "batch", ge=1)
    lr: float = key(2e-4, "learning rate", gt=0)
    ema_halflife_steps: float = key(500.0, "EMA half-life in steps (0: no EMA)", ge=0)
    seed: int = key(0, "seed", ge=0)
    checkpoint_every: int = key(500, "steps between resumable checkpoints", ge=1)
    keep_checkpoints: int = key(2, "checkpoints kept (older ones are deleted)", ge=1)
    log_every: int = key(50, "steps between rows of log.jsonl (mean loss)", ge=1)
    save_dtype: Literal["float32", "float16"] = key("float32", "dtype of the saved pipeline's weights")
    progress: bool = key(True, "progress bar")


def work_dir_for(output) -> Path:
    """The default directory of a teacher's checkpoints and log: ``<output>.training``."""
    output = Path(output)
    return output.with_name(output.name + ".training")


def _checkpoint_problem(path: Path) -> str | None:
    try:
        _, meta = safetensors_header(path)
    except OnestepError as exc:
        return str(exc)
    if meta.get("format") != FORMAT:
        return f"{path} is not a train-teacher checkpoint (format {meta.get('format')!r}, expected {FORMAT})"
    return None


def _resume_point(work: Path) -> Path:
    path, skipped = latest_valid_checkpoint(work, _checkpoint_problem)
    for bad, why in skipped:
        warnings.warn(f"skipping {bad.name}: {why}", OnestepWarning, stacklevel=3)
    if path is not None:
        return path
    if skipped:
        raise OnestepError(f"no readable checkpoint in {work}/checkpoints ({len(skipped)} damaged); start anew "
                           f"without --resume in another --checkpoints directory")
    raise OnestepError(f"nothing to resume: {work}/checkpoints holds no checkpoint; drop --resume to start")


def _check_same_config(stored: dict, cfg: TeacherTrainingConfig, path: Path) -> None:
    now = to_dict(cfg)
    changed = sorted(k for k in set(stored) | set(now) if k not in RESUMABLE and stored.get(k) != now.get(k))
    if changed:
        raise OnestepError(f"cannot resume from {path}: the config changed ({', '.join(changed)}); only "
                           f"{', '.join(RESUMABLE)} may change on --resume")


def train_teacher(cfg: TeacherTrainingConfig, output, progress: bool = True, work_dir=None, resume: bool = False,
                  download: bool = False) -> dict:
    """Train a class-conditional UNet2DModel under the EDM loss and save it as a diffusers
    pipeline directory (``EDMPipeline``: unet + EDMEulerScheduler) at ``output``.

    Checkpoints and ``log.jsonl`` go to ``work_dir`` (default ``<output>.training``); with
    ``resume`` training continues from its newest checkpoint. Returns {"seconds" (training time,
    all sessions), "final_loss", "parameters", "steps"}.
    """
    from diffusers import EDMEulerScheduler, UNet2DModel

    work = Path(work_dir) if work_dir is not None else work_dir_for(output)
    start = _resume_point(work) if resume else None
    if not resume and list_checkpoints(work):
        raise OnestepError(f"{work} already holds checkpoints of a teacher; pass --resume to continue it, or "
                           f"choose another --output or --checkpoints")
    x, y = load_named(cfg.dataset, "train", cfg.data_root, download)
    unet_kwargs = dataclasses.asdict(cfg.unet)
    unet_kwargs["sample_size"] = x.shape[-1]
    if unet_kwargs["in_channels"] != x.shape[1]:
        raise OnestepError(f"config key 'unet.in_channels': {cfg.dataset} has {x.shape[1]} channel(s), got "
                           f"{unet_kwargs['in_channels']}")
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

    fit = DenoiserFit(network, draw, batch_size=cfg.batch_size, lr=cfg.lr, schedule=s, seed=cfg.seed,
                      ema_halflife_steps=cfg.ema_halflife_steps)
    work.mkdir(parents=True, exist_ok=True)
    lock = RunLock(work).acquire()
    try:
        seconds = 0.0
        if start is not None:
            tensors, meta = load_safetensors(start)
            _check_same_config(json.loads(meta["config"]), cfg, start)
            fit.load_state(tensors, json.loads(meta["state"]))
            seconds = float(meta["seconds"])
            truncate_stats(work, fit.step_count, LOG_FILE)
        else:
            atomic_write_text(dump_yaml(cfg), work / "config.yaml")
        losses, seconds = _train(fit, cfg, work, seconds, progress)
    finally:
        lock.release()
    trained = fit.result.unet
    if cfg.save_dtype == "float16":
        trained = torch.nn.Module.to(trained, torch.float16)  # (diffusers' own .to warns on every cast)
    final = sum(losses[-100:]) / len(losses[-100:]) if len(losses) >= 100 else _last_logged_loss(work, losses)
    info = {"seconds": round(seconds, 1), "final_loss": final,
            "parameters": sum(p.numel() for p in unet.parameters()), "steps": fit.step_count,
            "samples_seen": fit.step_count * cfg.batch_size, "dataset": cfg.dataset, "dtype": cfg.save_dtype}

    def records(tmp: Path) -> None:
        (tmp / "training.json").write_text(json.dumps(info, indent=1))
        (tmp / "training_config.yaml").write_text(dump_yaml(cfg))

    write_pipeline_dir(EDMPipeline(unet=trained, scheduler=scheduler), output, records)
    return info


def _train(fit: DenoiserFit, cfg: TeacherTrainingConfig, work: Path, seconds: float,
           progress: bool) -> tuple[list[float], float]:
    """Steps up to ``cfg.steps`` with checkpoints and log rows, from ``seconds`` of earlier training;
    returns (the losses of this session, the training seconds in all)."""
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, initial=min(fit.step_count, cfg.steps), desc="train teacher",
               disable=not progress, leave=False)
    t0 = time.perf_counter()
    while fit.step_count < cfg.steps:
        losses.append(fit.step())
        bar.update(1)
        step = fit.step_count
        if step % cfg.log_every == 0:
            window = losses[-cfg.log_every:]
            row = {"step": step, "loss": round(sum(window) / len(window), 5),
                   "seconds": round(seconds + time.perf_counter() - t0, 1)}
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            with open(work / LOG_FILE, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save(fit, cfg, work, seconds + time.perf_counter() - t0)
    bar.close()
    return losses, seconds + time.perf_counter() - t0


def _save(fit: DenoiserFit, cfg: TeacherTrainingConfig, work: Path, seconds: float) -> None:
    tensors, state = fit.state()
    meta = {"format": FORMAT, "config": json.dumps(to_dict(cfg)), "state": json.dumps(state),
            "seconds": str(round(seconds, 2)), "step": str(fit.step_count)}
    atomic_save(tensors, checkpoint_path(work, fit.step_count), meta)
    prune_checkpoints(work, cfg.keep_checkpoints)


def _last_logged_loss(work: Path, losses: list[float]) -> float:
    rows = (work / LOG_FILE).read_text().splitlines() if (work / LOG_FILE).is_file() else []
    if rows:
        return float(json.loads(rows[-1])["loss"])
    return sum(losses) / len(losses) if losses else float("nan")
