"""Loading a config: YAML, ``--set`` overrides, renamed keys, relative paths, cross-section checks.

The resolved config is the single source of truth of a run: it is printed by ``--dry-run``,
written to ``<run>/config.yaml`` and stored inside every checkpoint.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from ..core import schema
from ..errors import OnestepError, OnestepWarning
from .objective import build_objective
from .sections import RECIPE_DEFAULTS, Config

# Keys renamed in 0.2 (old -> new); the old spelling works for one release with a warning.
RENAMED = {
    "gan.features": "discriminator.features",
    "gan.hidden": "discriminator.hidden",
    "gan.head_weight": "discriminator.loss_weight",
    "gan.r1_weight": "discriminator.r1_weight",
    "gan.sigma_sampler": "discriminator.sigma_sampler",
    "gan.sigma_range": "discriminator.sigma_range",
    "train.lr_head": "discriminator.lr",
}


class ConfigDeprecationWarning(FutureWarning):
    """A config key was renamed; the message names the new key."""


def _apply_renames(data: dict, warn: bool = True) -> dict:
    for old, new in RENAMED.items():
        (s_old, k_old), (s_new, k_new) = old.split("."), new.split(".")
        section = data.get(s_old)
        if not isinstance(section, dict) or k_old not in section:
            continue
        target = data.setdefault(s_new, {})
        if not isinstance(target, dict):
            continue  # reported by the schema as a malformed section
        if k_new in target:
            raise OnestepError(f"config keys '{old}' and '{new}' are the same setting; keep only '{new}'")
        target[k_new] = section.pop(k_old)
        if warn:
            warnings.warn(f"config key '{old}' is deprecated and will be removed; use '{new}'",
                          ConfigDeprecationWarning, stacklevel=4)
    return data


def from_dict(data: dict, cls: type | None = None, stored: bool = False):
    """Build and validate a config (default: the distillation ``Config``) from a nested dict.

    ``stored``: the config a checkpoint carries, possibly written by an earlier release: renamed
    keys move without a warning and parameters of other objectives are ignored."""
    cls = cls or Config
    if cls is not Config:
        return schema.build(cls, data, "")
    if not isinstance(data, dict):
        raise OnestepError(f"config file: expected a mapping of sections, got {data!r}")
    data = _apply_renames({k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}, warn=not stored)
    objective = build_objective(data.get("objective"), stored)
    config = schema.build(Config, {k: v for k, v in data.items() if k != "objective"}, "")
    config.objective = objective
    validate(config, warn=not stored)
    return config


def to_dict(config) -> dict:
    """Plain nested dict; the objective's parameters flattened into its section."""
    out = asdict(config)
    if isinstance(config, Config):
        out["objective"].update(out["objective"].pop("params"))
    return out


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
        name, raw = item.split("=", 1)
        parts = name.strip().split(".")
        if not all(parts):
            raise OnestepError(f"--set: malformed key '{name}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise OnestepError(f"--set: '{part}' in '{name}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping; one-line errors for a missing, undecodable or invalid file."""
    path = Path(path)
    if path.is_dir():
        raise OnestepError(f"config file {path} is a directory; give a YAML file (e.g. configs/digits.yaml)")
    if not path.is_file():
        raise OnestepError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise OnestepError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise OnestepError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise OnestepError(f"config file {path}: expected a mapping at the top level")
    return data


# Keys holding file paths; a relative one resolves against the config file's directory.
PATH_KEYS = (("teacher", "path"), ("teacher", "prompts"), ("data", "pairs"))


def resolve_paths(data: dict, base: Path) -> dict:
    """Make the relative paths of ``PATH_KEYS`` absolute where they exist under ``base`` (a path
    that exists nowhere there is left as given: a hub id, or an error reported where it is read)."""
    for section, name in PATH_KEYS:
        node = data.get(section)
        value = node.get(name) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute() and (base / value).exists():
            node[name] = str((base / value).resolve())
    return data


def load(path: str | Path, overrides: list[str] | None = None, cls: type | None = None):
    """Load a YAML config file (its relative paths resolved against its directory), apply ``--set``
    overrides (relative to the working directory, as typed), validate."""
    data = resolve_paths(read_yaml(path), Path(path).resolve().parent)
    return from_dict(apply_overrides(data, overrides or []), cls)


def loads(text: str) -> Config:
    return from_dict(yaml.safe_load(text) or {})


def _check_range(sampler: str | None, value: list[float] | None, key_name: str) -> None:
    if value is None:
        return
    lo, hi = value
    if not lo < hi:
        raise OnestepError(f"config key '{key_name}': expected [lo, hi] with lo < hi, got {value}")
    if sampler == "karras" and hi > 1:
        raise OnestepError(f"config key '{key_name}': the karras sampler takes u in [0, 1], got {value}")
    if sampler == "karras_grid" and (hi > 999 or not float(lo).is_integer() or not float(hi).is_integer()):
        raise OnestepError(f"config key '{key_name}': the karras_grid sampler takes indices in 0..999, got {value}")
    if sampler == "lognormal":
        raise OnestepError(f"config key '{key_name}': the lognormal sampler takes no range")


def apply_recipe(config: Config, recipe: dict) -> None:
    """Fill null ``gan`` / ``discriminator`` keys from the objective's recipe, else ``RECIPE_DEFAULTS``."""
    for name, default in {**RECIPE_DEFAULTS, **recipe}.items():
        section, key_name = name.split(".")
        target = getattr(config, section)
        if getattr(target, key_name) is None:
            setattr(target, key_name, default)


def unread_keys(config: Config) -> tuple[list[str], str]:
    """The keys set away from their defaults that this run would not read, and why (before the
    objective's recipe fills the null ``gan``/``discriminator`` keys).

    Without a discriminator (reverse KL or no ratio, ``gan.weight`` 0, no ``monitor``) nothing in
    ``discriminator``, ``data.dataset``/``data.root`` or ``gan.sigma`` is read; ``data.root``
    only locates ``data.dataset``."""
    spec, params = config.objective.resolve()
    d, data = config.discriminator, config.data
    gan_on = config.gan.weight if config.gan.weight is not None else spec.recipe.get("gan.weight", 0)
    unread = []
    if not (spec.needs_ratio(params) or gan_on > 0 or d.monitor):
        # (a resolved config, e.g. a run's config.yaml, carries the recipe's values: those are defaults too)
        recipe = {**RECIPE_DEFAULTS, **spec.recipe}
        unread += [f"discriminator.{f.name}" for f in fields(d) if f.name != "monitor"
                   and getattr(d, f.name) not in (f.default, recipe.get(f"discriminator.{f.name}", f.default))]
        unread += [f"data.{name} ({getattr(data, name)!r})" for name in ("dataset", "root") if getattr(data, name)]
        unread += ["gan.sigma"] if config.gan.sigma not in (None, recipe.get("gan.sigma")) else []
        return unread, (f"{spec.name} with gan.weight 0 trains no discriminator (set discriminator.monitor: true "
                        f"to train one on the data set)")
    if data.root and not data.dataset:
        return ["data.root"], "it only locates data.dataset, which is not set"
    return [], ""


def validate(config: Config, warn: bool = True) -> None:
    """Relations between sections; each failure names the key and what to do. ``warn``: one
    warning line naming keys this run would not read (``unread_keys``)."""
    spec, _ = config.objective.resolve()
    o, d = config.objective, config.discriminator
    _check_range(o.sigma_sampler or spec.sigma_sampler, o.sigma_range, "objective.sigma_range")
    if d.sigma_range is not None and d.sigma_sampler is None:
        raise OnestepError("config key 'discriminator.sigma_range' needs discriminator.sigma_sampler")
    unread, why = unread_keys(config)
    if unread and warn:
        warnings.warn(f"config keys not read by this run: {', '.join(unread)}: {why}", OnestepWarning, stacklevel=3)
    apply_recipe(config, spec.recipe)
    _check_range(d.sigma_sampler, d.sigma_range, "discriminator.sigma_range")
    d.check("discriminator")
    lora = [f"{name}.lora" for name in ("generator", "fake_score") if getattr(config, name).lora.rank is not None]
    if lora and config.train.sharding == "fsdp":
        raise OnestepError(f"config keys {' and '.join(lora)}: train.sharding: fsdp is not supported with LoRA "
                           f"adapters yet (the shared base is not sharded); use sharding: none")
    if config.train.shard_teacher and config.train.sharding != "fsdp":
        raise OnestepError("config key 'train.shard_teacher' needs train.sharding: fsdp")
    if config.train.sharding == "fsdp" and config.train.mixed_precision == "fp16":
        raise OnestepError("config keys 'train.sharding' and 'train.mixed_precision': fp16 loss scaling is not "
                           "supported with sharded networks; use train.mixed_precision=bf16")
    if spec.requires_gan and config.gan.weight <= 0:
        raise OnestepError(f"objective '{spec.name}' needs the GAN term: set gan.weight > 0 (e.g. 1e-2)")
