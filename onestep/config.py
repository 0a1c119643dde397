"""The config schema: nested dataclasses, loaded from YAML, validated, overridable.

The resolved config is the single source of truth of a run: it is printed by
``--dry-run``, written to ``<run>/config.yaml`` and stored inside every checkpoint.
Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import OnestepError


@dataclass
class TeacherConfig:
    """Which frozen model is distilled.

    kind: ``gmm`` (analytic Gaussian mixture, exact denoiser) or ``diffusers``
    (a pipeline directory or hub id).
    """

    kind: Literal["gmm", "diffusers"] = "gmm"
    # gmm: one row of means per component, an isotropic std and a weight per component.
    means: Optional[list[list[float]]] = None
    stds: Optional[list[float]] = None
    weights: Optional[list[float]] = None
    # diffusers: local directory or hub id, optional subfolder of the UNet, weight dtype.
    path: Optional[str] = None
    subfolder: Optional[str] = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # text-to-image teachers: prompts file (one per line), classifier-free guidance.
    prompts: Optional[str] = None
    guidance_scale: float = 1.0


@dataclass
class NetworkConfig:
    """The MLP denoiser fitted to an analytic teacher (copied into generator and fake score)."""

    hidden: int = 256
    depth: int = 3
    sigma_data: Optional[float] = None  # None: the mixture's per-coordinate std
    fit_steps: int = 3000
    fit_batch: int = 512
    fit_lr: float = 1e-3


@dataclass
class ScheduleConfig:
    """EDM noise-schedule constants (Karras et al. 2022, arXiv 2206.00364, Table 1)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2


@dataclass
class GeneratorConfig:
    sigma_init: float = 2.5


@dataclass
class ObjectiveConfig:
    """The generator objective. ``None`` fields take the objective's own default."""

    name: str = "dmd"
    f: Optional[str] = None  # f_distill / uni_instruct: rkl srkl js sh fkl jeffreys chi2 neyman alpha
    f_alpha: Optional[float] = None  # exponent of the alpha-divergence (f: alpha)
    alpha: Optional[float] = None  # SiD's alpha (sid, sida)
    c: Optional[float] = None  # SIM's pseudo-Huber constant
    sigma_weighting: Optional[Literal["sigma2", "none"]] = None  # SIM's time weighting
    fisher_weight: Optional[float] = None  # uni_instruct: weight of L_fisher (1 = exact)
    sigma_sampler: Optional[str] = None  # lognormal | karras | karras_grid; None: objective's
    sigma_range: Optional[list[float]] = None  # [u_lo, u_hi] (karras) or [j_lo, j_hi] (grid)
    # sigmas of the fake-score loss: lognormal (EDM, the default) or "generator" (the
    # objective's own sampler, as SiD / DMD2 train their fake score)
    fake_sigma_sampler: Literal["lognormal", "generator"] = "lognormal"
    # stratified sigmas: one quantile slot of the sampler per batch element (same marginal,
    # lower variance of every batch mean over sigma), for every sigma the trainer draws
    stratified_sigma: bool = False
    weight_norm: Literal["wf", "none"] = "wf"
    logit_clip: float = 10.0
    ratio_clip: list[float] = field(default_factory=lambda: [0.1, 20.0])
    ratio_bins: int = 8  # per-sigma-bin normalisation of r (0: off)
    normalize_weights: bool = True  # h <- h / mean(h) over the global batch
    # generator steps with reverse-KL weights (r = 1) while the head learns the ratio
    # (Uni-Instruct's recipe: RKL first); None: 10% of train.steps
    ratio_warmup: Optional[int] = None


@dataclass
class GanConfig:
    """Discriminator / density-ratio head on frozen-teacher or fake-score features."""

    weight: float = 0.0  # generator GAN weight (0: no GAN term)
    head_weight: float = 1e-2  # weight of the head's loss next to the fake-score loss
    features: Optional[Literal["teacher", "fake_score"]] = None  # None: the objective's default
    r1_weight: float = 0.0
    hidden: int = 128
    # noise levels of the GAN term and of the head's training: None = the objective's own
    # sampler (needed when the head also estimates the density ratio); e.g. lognormal puts
    # the discriminator where images are still visible
    sigma_sampler: Optional[Literal["lognormal", "karras", "karras_grid"]] = None
    sigma_range: Optional[list[float]] = None  # [u_lo, u_hi] (karras) or [j_lo, j_hi] (grid)


@dataclass
class RegressionConfig:
    """DMD's regression term (Yin et al. 2023, arXiv 2311.18828, Eq. 7) for any objective:
    ``weight * 0.5 |G(z) - y(z)|^2`` per pair, where ``y(z)`` is the teacher's multi-step ODE
    sample from ``sigma_max z`` (pairs: the teacher-sample cache, ``data.cache_size`` of them
    with ``data.cache_steps`` Heun steps, made once per run)."""

    weight: float = 0.0  # 0: no regression term
    batch_size: int = 16  # pairs per generator step (global)


@dataclass
class DataConfig:
    """Where the head's "real" samples come from, and the data-free teacher-sample cache."""

    dataset: Optional[str] = None  # None: data-free (exact samples or a teacher-sample cache)
    # teacher multi-step samples (with their noise) cached in the run directory: the head's
    # "real" side when data-free, and the regression term's pairs
    cache_size: int = 256
    cache_steps: int = 18  # Heun steps of the teacher sampler for the cache (NFE = 2 n - 1)
    cache_batch: int = 64


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    fake_steps_per_gen: int = 1
    grad_accum: int = 1
    lr_generator: float = 1e-4
    lr_fake: float = 1e-4
    lr_head: Optional[float] = None  # None: lr_fake
    # generator learning-rate schedule: constant, or cosine decay to 10% over train.steps
    # (the fake score keeps its rate: it must track a moving target)
    lr_decay: Literal["none", "cosine"] = "none"
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 10.0  # max global grad norm per network (0: off)
    ema_halflife_kimg: float = 0.0  # EMA half-life in thousands of samples (0: EMA off)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # recompute UNet activations in backward (saves memory; sid / sim / uni_instruct
    # backpropagate through teacher and fake score as well as the generator)
    gradient_checkpointing: bool = False
    # CPU: keep freed memory in the process (glibc mallopt, onestep/allocator.py) instead of
    # page-faulting activations back in every iteration
    retain_freed_memory: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    max_nonfinite: int = 10  # abort after this many non-finite steps in a row
    progress: bool = True


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # attention kernels of every network: auto | xformers | flash | efficient | math
    attention: Literal["auto", "xformers", "flash", "efficient", "math"] = "auto"


@dataclass
class UNetConfig:
    """A diffusers ``UNet2DModel`` (see its documentation for each field)."""

    sample_size: int = 8
    in_channels: int = 1
    out_channels: int = 1
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    down_block_types: list[str] = field(default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D"])
    num_class_embeds: Optional[int] = 10
    norm_num_groups: int = 8
    attention_head_dim: int = 8


@dataclass
class TeacherTrainingConfig:
    """``onestep train-teacher``: an EDM-loss UNet on a bundled data set, saved as a pipeline."""

    dataset: Literal["digits", "digits16"] = "digits"
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-4
    ema_halflife_steps: float = 500.0
    seed: int = 0
    progress: bool = True


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise an OnestepError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except OnestepError:
                pass
        raise OnestepError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise OnestepError(f"config key '{key}': expected one of {_type_name(tp)}, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise OnestepError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML 1.1 reads "1e-4" (no dot) as a string: accept any float spelling.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise OnestepError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"config section '{prefix}'" if prefix else "config file"
        raise OnestepError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise OnestepError(
                f"unknown config key '{full}' (valid keys here: {', '.join(names)})"
            )
    kwargs = {}
    for name in names:
        if name in data:
            full = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], full)
    return cls(**kwargs)


def from_dict(data: dict, cls: type = None) -> Config:
    """Build and validate a config (default: the distillation ``Config``) from a nested dict."""
    config = _build(cls or Config, data, "")
    if isinstance(config, Config):
        validate(config)
    return config


def to_dict(config: Config) -> dict:
    return asdict(config)


class _Dumper(yaml.SafeDumper):
    """Sections in block style, lists (means, betas, ...) inline."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_yaml(config) -> str:
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise OnestepError(f"--set expects key=value (e.g. train.steps=100), got '{item}'")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise OnestepError(f"--set: malformed key '{key}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OnestepError(f"--set: '{part}' in '{key}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load(path: str | Path, overrides: list[str] | None = None, cls: type = None) -> Config:
    """Load a YAML config file, apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise OnestepError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise OnestepError(f"config file {path} is not valid YAML{where}") from exc
    if not isinstance(data, dict):
        raise OnestepError(f"config file {path}: expected a mapping at the top level")
    return from_dict(apply_overrides(data, overrides or []), cls)


def loads(text: str) -> Config:
    return from_dict(yaml.safe_load(text) or {})


def validate(config: Config) -> None:
    """Cross-field checks; each failure names the key and what to do."""
    t, tr, s = config.teacher, config.train, config.schedule
    if t.kind == "gmm":
        if not t.means:
            raise OnestepError("config key 'teacher.means': a gmm teacher needs a list of means")
        dims = {len(m) for m in t.means}
        if len(dims) != 1 or 0 in dims:
            raise OnestepError("config key 'teacher.means': every mean needs the same, non-zero length")
        k = len(t.means)
        for name in ("stds", "weights"):
            value = getattr(t, name)
            if value is not None and len(value) != k:
                raise OnestepError(
                    f"config key 'teacher.{name}': expected {k} values (one per mean), got {len(value)}"
                )
            if value is not None and any(v <= 0 for v in value):
                raise OnestepError(f"config key 'teacher.{name}': values must be positive")
    elif t.kind == "diffusers" and not t.path:
        raise OnestepError("config key 'teacher.path': a diffusers teacher needs a directory or hub id")
    for key, value in (
        ("train.steps", tr.steps),
        ("train.batch_size", tr.batch_size),
        ("train.fake_steps_per_gen", tr.fake_steps_per_gen),
        ("train.grad_accum", tr.grad_accum),
        ("train.checkpoint_every", tr.checkpoint_every),
        ("train.log_every", tr.log_every),
        ("train.max_nonfinite", tr.max_nonfinite),
    ):
        if value < 1:
            raise OnestepError(f"config key '{key}': must be at least 1, got {value}")
    for key, value in (("train.lr_generator", tr.lr_generator), ("train.lr_fake", tr.lr_fake)):
        if not value > 0:
            raise OnestepError(f"config key '{key}': must be positive, got {value}")
    if len(tr.betas) != 2 or not all(0 <= b < 1 for b in tr.betas):
        raise OnestepError(f"config key 'train.betas': expected two values in [0, 1), got {tr.betas}")
    if not 0 < s.sigma_min < s.sigma_max:
        raise OnestepError("config keys 'schedule.sigma_min/sigma_max': need 0 < sigma_min < sigma_max")
    if not config.generator.sigma_init > 0:
        raise OnestepError("config key 'generator.sigma_init': must be positive")
    if config.gan.weight < 0:
        raise OnestepError("config key 'gan.weight': must be >= 0")
    if config.regression.weight < 0:
        raise OnestepError("config key 'regression.weight': must be >= 0")
    if config.regression.weight > 0 and config.regression.batch_size < 1:
        raise OnestepError("config key 'regression.batch_size': must be at least 1 when regression.weight > 0")
    # Objective name and parameters are checked against the registry.
    from .objectives import registry

    registry.resolve(config.objective)
