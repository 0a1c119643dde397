"""Reading a finished (or running) run directory: its config, checkpoints and generator."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import config as config_mod
from .checkpoint import latest_checkpoint, load_safetensors, unpack_module
from .errors import OnestepError
from .generator import OneStepGenerator
from .networks import NETWORK_FILE, build_network


def resolve_checkpoint(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OnestepError(f"run directory not found: {run_dir}")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise OnestepError(f"no checkpoint in {run_dir}/checkpoints; has `onestep distill` run there?")
    return path


def load_generator(run_dir: str | Path, ema: bool = False, device="cpu") -> tuple[OneStepGenerator, config_mod.Config, int]:
    """The run's generator (or its EMA) from the latest checkpoint; returns (generator, config, step)."""
    run_dir = Path(run_dir)
    path = resolve_checkpoint(run_dir)
    tensors, raw = load_safetensors(path)
    cfg = config_mod.from_dict(json.loads(raw["config"]))
    spec_file = run_dir / NETWORK_FILE
    if not spec_file.is_file():
        raise OnestepError(f"{spec_file} is missing; the run directory is incomplete")
    network = build_network(json.loads(spec_file.read_text()))
    generator = OneStepGenerator(network, cfg.generator.sigma_init)
    prefix = "ema" if ema else "generator"
    if ema and not any(k.startswith("ema.") for k in tensors):
        raise OnestepError(f"run {run_dir} has no EMA weights (train.ema_halflife_kimg was 0); drop --ema")
    unpack_module(prefix, tensors, generator)
    return generator.to(device).eval().requires_grad_(False), cfg, int(json.loads(raw["step"]))


def conditioning(network, cfg, class_labels: list[int] | None = None, prompts: list[str] | None = None):
    """cond_fn(start, count) for ``sampling.generate`` and the matching image decoder.

    Class runs cycle over ``class_labels`` (default: all classes); text runs cycle over
    ``prompts`` (default: the run's prompts file). decode(x) maps samples to [-1, 1] images
    (the teacher's VAE for latent runs), or is None for non-image runs.
    """
    kind = getattr(network, "cond_kind", "none")
    decode = (lambda x: x) if getattr(network, "unet", None) is not None else None
    parts = {}
    if kind == "text" or (decode is not None and network.sample_shape[0] == 4):
        from .diffusers_teacher import load_components

        parts = load_components(cfg.teacher.path, cfg.teacher.subfolder)
    if "vae" in parts:
        vae = parts["vae"].eval()
        scale = float(vae.config.scaling_factor)

        def decode(x):  # noqa: F811  (latent runs decode with the teacher's VAE)
            with torch.no_grad():
                return vae.decode(x / scale).sample.float()

    if kind == "class":
        labels = torch.tensor(class_labels or list(range(network.unet.config.num_class_embeds)), dtype=torch.long)
        return (lambda start, count: labels[(torch.arange(start, start + count)) % len(labels)]), decode
    if kind == "text":
        from .diffusers_teacher import read_prompts
        from .pipeline import encode_prompts

        texts = prompts or read_prompts(cfg.teacher.prompts)
        embeds = encode_prompts(parts["tokenizer"], parts["text_encoder"], texts)
        return (lambda start, count: embeds[torch.arange(start, start + count) % len(texts)]), decode
    if class_labels:
        raise OnestepError("--class-label given, but this run is not class-conditional")
    return None, decode


def stats(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "stats.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
