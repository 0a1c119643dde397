"""Reading a finished (or running) run directory: its config, checkpoints and generator."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from . import config as config_mod
from .core.io import load_safetensors, safetensors_header, unpack_module
from .core.modules import fingerprint
from .core.rundir import (
    NETWORK_FILE,
    checkpoint_path,
    latest_checkpoint,
    latest_valid_checkpoint,
    list_checkpoints,
)
from .core.tensors import cycled_labels, take_rows
from .errors import OnestepError, OnestepWarning
from .nets import lora
from .nets.generator import OneStepGenerator
from .nets.spec import build_network
from .portable.edm_form import decode_latents
from .portable.prompts import TEXT_PARTS
from .teachers.diffusers import load_components, load_network, read_prompts


def resolve_checkpoint(run_dir: str | Path) -> Path:
    """The newest sound checkpoint of a run; a damaged newer one is skipped with a one-line warning."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OnestepError(f"run directory not found: {run_dir}")
    if latest_checkpoint(run_dir) is None:
        raise OnestepError(f"no checkpoint in {run_dir}/checkpoints; has `onestep distill` run there?")
    path, skipped = latest_valid_checkpoint(run_dir)
    for bad, why in skipped:
        warnings.warn(f"skipping {bad.name}: {why}", OnestepWarning, stacklevel=2)
    if path is None:
        raise OnestepError(f"no sound checkpoint in {run_dir}/checkpoints ({len(skipped)} damaged: "
                           f"{skipped[0][1]})")
    return path


def checkpoint_of(run_dir: str | Path, step: int | None = None) -> Path:
    """The run's latest sound checkpoint, or the kept checkpoint of ``step``."""
    run_dir = Path(run_dir)
    if step is None:
        return resolve_checkpoint(run_dir)
    path = checkpoint_path(run_dir, step)
    if not path.is_file():
        kept = ", ".join(str(s) for s, _ in list_checkpoints(run_dir)) or "none"
        raise OnestepError(f"run {run_dir} has no checkpoint of step {step} (kept: {kept}); set "
                           "train.checkpoint_every and train.keep_checkpoints so that it is kept")
    return path


def load_generator(run_dir: str | Path, ema: bool = False, device="cpu",
                   step: int | None = None) -> tuple[OneStepGenerator, config_mod.Config, int]:
    """The run's generator (or its EMA) from the latest checkpoint, or from the checkpoint of
    ``step``; returns (generator, config, step)."""
    run_dir = Path(run_dir)
    path = checkpoint_of(run_dir, step)
    tensors, raw = load_safetensors(path)  # (checks the tensors against their recorded digest)
    try:
        cfg = config_mod.from_dict(json.loads(raw["config"]), stored=True)
        step = int(json.loads(raw["step"]))
    except (KeyError, ValueError):
        raise OnestepError(f"{path} is not an onestep checkpoint (no config and step in its metadata)") from None
    spec_file = run_dir / NETWORK_FILE
    if not spec_file.is_file():
        raise OnestepError(f"{spec_file} is missing; the run directory is incomplete")
    try:
        spec = json.loads(spec_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise OnestepError(f"{spec_file} is not valid JSON; the run directory is damaged") from None
    settings = cfg.generator.lora.settings()
    if settings is None:
        network = build_network(spec)
    else:  # the adapter goes onto the teacher's own weights, checked to be the ones it was trained on
        network = lora.add_adapter(lora_base(cfg, raw, path, device), "generator", settings)
    generator = OneStepGenerator(network, cfg.generator.sigma_init)
    prefix = "ema" if ema else "generator"
    if ema and not any(k.startswith("ema.") for k in tensors):
        raise OnestepError(f"run {run_dir} has no EMA weights (train.ema_halflife_kimg was 0); drop --ema")
    unpack_module(prefix, tensors, generator)
    return generator.to(device).eval().requires_grad_(False), cfg, step


def run_config(run_dir) -> config_mod.Config:
    """The config a run's newest sound checkpoint was written under (its header only: no tensors read)."""
    path = resolve_checkpoint(run_dir)
    _, raw = safetensors_header(path)
    try:
        return config_mod.from_dict(json.loads(raw["config"]), stored=True)
    except (KeyError, ValueError):
        raise OnestepError(f"{path} is not an onestep checkpoint (no config in its metadata)") from None


def lora_base(cfg, raw: dict, path: Path, device):
    """The frozen teacher network a LoRA run's adapters sit on, built from ``cfg.teacher`` and
    checked against the fingerprint the checkpoint ``path`` recorded (``raw``: its metadata)."""
    t = cfg.teacher
    network = load_network(t.path, t.subfolder, t.dtype, t.guidance_scale, t.resolution, cfg.attention, device,
                           t.trust_remote_code)
    recorded = json.loads(raw.get("network_fingerprint", "null"))
    if recorded is not None and not math.isclose(fingerprint(network, skip=lora.is_adapter_parameter), recorded,
                                                 rel_tol=1e-9):
        raise OnestepError(f"the teacher at {cfg.teacher.path} is not the one the LoRA adapters of {path.name} were "
                           f"trained on (its weights differ); point teacher.path at that teacher")
    return network


def auxiliary_components(network, cfg) -> dict:
    """The teacher's VAE and text encoders / tokenizers that a latent or text run needs ({} otherwise)."""
    if network.cond_kind != "text" and not network.is_latent:
        return {}
    return load_components(cfg.teacher.path, names=("vae", *TEXT_PARTS))


def conditioning(network, cfg, class_labels: list[int] | None = None, prompts: list[str] | None = None):
    """cond_fn(start, count) for ``core.samplers.generate`` and the matching image decoder.

    Class runs cycle over ``class_labels`` (default: all classes); text runs cycle over
    ``prompts`` (default: the run's prompts file). decode(x) maps samples to [-1, 1] images
    (the teacher's VAE for latent runs), or is None for non-image runs.
    """
    image = len(network.sample_shape) == 3
    parts = auxiliary_components(network, cfg) if image else {}
    decode = None
    if "vae" in parts:
        vae = parts["vae"].eval()
        decode = lambda x: decode_latents(vae, x, float(vae.config.scaling_factor))  # noqa: E731
    elif image:
        decode = lambda x: x  # noqa: E731
    if network.cond_kind == "class":
        labels = class_labels or list(range(network.num_classes))
        return (lambda start, count: cycled_labels(start, count, labels)), decode
    if network.cond_kind == "text":
        texts = prompts or read_prompts(cfg.teacher.prompts)
        cond, _ = network.encode_prompts(parts, texts, parts.get("vae"))
        return (lambda start, count: take_rows(cond, cycled_labels(start, count, len(texts)))), decode
    if class_labels:
        raise OnestepError("--class-label given, but this run is not class-conditional")
    return None, decode


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
