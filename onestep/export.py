"""Export a run's generator as a diffusers pipeline directory (``onestep export``).

The directory holds ``save_pretrained`` output (safetensors) and a self-contained
``pipeline.py`` named in ``model_index.json``, so that both
``OneStepPipeline.from_pretrained(dir)`` and
``diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` load it, the
second without ``onestep`` installed. Where the generator is exactly a stock 1-step sampler
(a VP teacher distilled at its largest sigma) it also writes that scheduler under
``stock_scheduler/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .core.io import safetensors_header, write_pipeline_dir
from .errors import OnestepError
from .portable.pipeline import OneStepPipeline
from .runs import auxiliary_components, load_generator


def build_pipeline(run_dir, ema: bool = False, device="cpu"):
    """An in-memory OneStepPipeline of a run (generator + the teacher's VAE / CLIP); returns
    (pipeline, network, config)."""
    generator, cfg, _ = load_generator(run_dir, ema=ema, device=device)
    network = generator.network
    parts = network.pipeline_parts(cfg.generator.sigma_init)
    if parts is None:
        raise OnestepError("only runs on diffusers teachers export as pipelines; use `onestep sample` for this run")
    extra = auxiliary_components(network, cfg)
    if network.cond_kind != "text":
        extra = {k: v for k, v in extra.items() if k == "vae"}
    latent_scaling = float(extra["vae"].config.scaling_factor) if "vae" in extra else 1.0
    pipe = OneStepPipeline(**parts, **extra, latent_scaling=latent_scaling)
    return pipe.to(device), network, cfg


def export_run(run_dir, output, ema: bool = False) -> Path:
    """Write the pipeline directory; returns its path."""
    pipe, network, cfg = build_pipeline(run_dir, ema=ema)
    stock = network.stock_scheduler(cfg.generator.sigma_init)

    def stock_scheduler(tmp: Path) -> None:
        if stock is not None:
            stock.save_pretrained(tmp / "stock_scheduler")

    return write_pipeline_dir(pipe, output, stock_scheduler)


def load_pipeline(path, device="cpu") -> OneStepPipeline:
    """``OneStepPipeline.from_pretrained`` with one-line errors for a missing or corrupt directory."""
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
