"""Export a run's generator as a diffusers pipeline directory (``onestep export``).

The directory holds ``save_pretrained`` output (safetensors) and a copy of
``onestep/pipeline.py`` named in ``model_index.json``, so that both
``OneStepPipeline.from_pretrained(dir)`` and
``diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` load it, the
second without ``onestep`` installed. For VP teachers distilled at ``sigma_init`` equal to
the teacher's largest sigma it also writes a stock 1-step scheduler (``DDIMScheduler`` with
trailing spacing, or ``LCMScheduler`` for text-to-image) under ``stock_scheduler/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .errors import OnestepError
from .runs import load_generator

PIPELINE_FILE = Path(__file__).with_name("pipeline.py")


def build_pipeline(run_dir, ema: bool = False, device="cpu"):
    """An in-memory OneStepPipeline of a diffusers run (generator + the teacher's VAE / CLIP)."""
    from .diffusers_teacher import load_components
    from .pipeline import OneStepPipeline

    generator, cfg, _ = load_generator(run_dir, ema=ema, device=device)
    network = generator.network
    if not hasattr(network, "unet"):
        raise OnestepError("only runs on diffusers teachers export as pipelines; use `onestep sample` for this run")
    sigma_init = cfg.generator.sigma_init
    timestep_init = float(network.sigma_to_t(torch.tensor([sigma_init], dtype=torch.float32))[0])
    extra = {}
    if network.cond_kind == "text":
        parts = load_components(cfg.teacher.path, cfg.teacher.subfolder)
        extra = {k: parts[k] for k in ("vae", "text_encoder", "tokenizer")}
    elif network.unet.config.in_channels == 4 and cfg.teacher.kind == "diffusers":
        parts = load_components(cfg.teacher.path, cfg.teacher.subfolder)
        if "vae" in parts:
            extra = {"vae": parts["vae"]}
    latent_scaling = float(extra["vae"].config.scaling_factor) if "vae" in extra else 1.0
    pipe = OneStepPipeline(
        unet=network.unet, **extra,
        parameterization=network.kind, prediction_type=network.prediction_type,
        sigma_init=sigma_init, timestep_init=timestep_init, sigma_data=network.sigma_data,
        latent_scaling=latent_scaling, sample_shape=list(network.sample_shape),
    )
    return pipe.to(device), network, cfg


def save_self_contained(pipe, output, write_extra=None) -> Path:
    """Write ``pipe`` as a pipeline directory that loads without ``onestep``, atomically.

    ``save_pretrained`` output (safetensors), a copy of ``onestep/pipeline.py`` and a
    ``model_index.json`` naming the class in it; ``write_extra(tmp_dir)`` adds files before the
    directory is renamed into place. Returns ``output``.
    """
    output = Path(output)
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(PIPELINE_FILE, tmp / "pipeline.py")
    index_path = tmp / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = ["pipeline", type(pipe).__name__]
    index_path.write_text(json.dumps(index, indent=2))
    if write_extra is not None:
        write_extra(tmp)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output


def export_run(run_dir, output, ema: bool = False) -> Path:
    """Write the pipeline directory; returns its path."""
    pipe, network, cfg = build_pipeline(run_dir, ema=ema)

    def stock_scheduler(tmp: Path) -> None:
        if stock_compatible(network, cfg.generator.sigma_init):
            _write_stock_scheduler(tmp / "stock_scheduler", network)

    return save_self_contained(pipe, output, stock_scheduler)


def stock_compatible(network, sigma_init: float) -> bool:
    """A VP epsilon/v student at the table's largest sigma is a 1-step stock sampler at t = T-1."""
    if network.kind != "vp":
        return False
    hi = network.sigma_range[1]
    return abs(sigma_init - hi) <= 1e-4 * hi


def _write_stock_scheduler(path: Path, network) -> None:
    from diffusers import DDIMScheduler, LCMScheduler

    common = {"trained_betas": None, "prediction_type": network.prediction_type, "num_train_timesteps": len(network.log_sigmas)}
    abar = torch.tensor(network.param["alphas_cumprod"], dtype=torch.float64)
    alphas = abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    common["trained_betas"] = (1 - alphas).tolist()
    if network.cond_kind == "text":
        sched = LCMScheduler(**common, set_alpha_to_one=True, clip_sample=False)
    else:
        sched = DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing", clip_sample=False)
    sched.save_pretrained(path)


def load_pipeline(path, device="cpu"):
    """``OneStepPipeline.from_pretrained`` with one-line errors for a missing or corrupt directory."""
    from .checkpoint import safetensors_header
    from .pipeline import OneStepPipeline

    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise OnestepError(f"{path} is not a pipeline directory (no model_index.json); make one with `onestep export`")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError:
        raise OnestepError(f"{index_file} is not valid JSON; re-export the pipeline") from None
    for name, entry in index.items():
        is_component = isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)
        if name.startswith("_") or not is_component or name == "tokenizer":
            continue
        folder = path / name
        weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not weights:
            raise OnestepError(f"missing weights for '{name}' in {path} (expected {folder}/*.safetensors); re-export")
        for w in weights:
            safetensors_header(w)  # raises a one-line error if the file is corrupt
    try:
        return OneStepPipeline.from_pretrained(path).to(device)
    except (OSError, ValueError, RuntimeError) as exc:
        raise OnestepError(f"cannot load pipeline {path}: {str(exc).splitlines()[0]}") from None
