"""A run's whole state as one checkpoint: named objects (networks, EMA, optimizers, RNG, counters)
plus the config.

The tensors go to safetensors; the config, step, optimizer layout and counters to JSON in its
metadata (``core.io``). ``check_resumable`` refuses a resume whose config differs in anything
but the keys of ``RESUMABLE_CHANGES``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import config as config_mod
from ..core.io import (
    DIGEST_KEY,
    atomic_write_text,
    load_safetensors,
    pack_optimizer,
    restore_rng,
    rng_tensors,
    safetensors_header,
    unpack_module,
    unpack_optimizer,
)
from ..core.rundir import STATS_FILE
from ..errors import OnestepError
from . import sharding

FORMAT = "onestep-checkpoint-3"  # 2: the discriminator's tensors are "discriminator.*"; 3: a tensor digest
# Config keys that may differ between a run and its resumption.
# (learning rates may change: the way out of a divergence abort is to resume with lower ones)
RESUMABLE_CHANGES = {"train.steps", "train.checkpoint_every", "train.log_every", "train.progress",
                     "train.keep_checkpoints", "train.retain_freed_memory", "train.lr_generator", "train.lr_fake",
                     "discriminator.lr", "train.max_nonfinite", "train.report_to", "train.sample_every"}


# a resumed optimizer keeps this run's kernel choice and learning rates (the generator's is set
# every step; train.lr_fake and discriminator.lr may change on resume: RESUMABLE_CHANGES)
KEPT_GROUP_KEYS = ("lr", "fused", "foreach")


def _optimizer(opt):
    return opt.optimizer if hasattr(opt, "optimizer") else opt  # accelerate's wrapper


class Counters:
    """The loop's counters, a checkpointed object: the step, non-finite steps skipped, fp16 overflows."""

    def __init__(self):
        self.step = self.nonfinite_total = self.overflow_total = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "nonfinite_total": self.nonfinite_total, "overflow_total": self.overflow_total}

    def load_state_dict(self, saved: dict) -> None:
        self.step = int(saved["step"])
        self.nonfinite_total, self.overflow_total = int(saved["nonfinite_total"]), int(saved["overflow_total"])


class GeneratorState:
    """Torch's global RNGs and named ``torch.Generator``s as one checkpointed object (tensors ``rng.*``)."""

    def __init__(self, generators: dict[str, torch.Generator]):
        self.generators = generators

    def state_dict(self) -> dict[str, torch.Tensor]:
        return rng_tensors("rng", self.generators)

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        restore_rng("rng", tensors, self.generators)


@dataclass
class CheckpointState:
    """What a checkpoint holds, by name (EDM2's and accelerate's way: named objects, not a loop's
    attributes): modules (saved whole; gathered when sharded), optimizers with the module that owns
    their sharded parameters (None unsharded), and objects with ``state_dict``/``load_state_dict``."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, tuple[object, nn.Module | None]]
    counters: Counters
    rng: GeneratorState
    scaler: object | None = None  # accelerate's fp16 GradScaler
    network_fingerprint: float | None = None  # of the teacher's denoiser (LoRA runs load it back from the teacher)


def pack(st: CheckpointState, record) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON-able metadata) of a run's state; ``record``: the run's config."""
    tensors = {}
    for name, module in st.modules.items():  # gathered if sharded: a collective
        tensors.update({f"{name}.{k}": v for k, v in sharding.module_state(module).items()})
    layouts = {}
    for name, (opt, owner) in st.optimizers.items():
        t, layout = pack_optimizer(name, sharding.optimizer_state(_optimizer(opt), owner))
        tensors.update(t)
        layouts[name] = layout
    tensors.update(st.rng.state_dict())
    counters = st.counters.state_dict()
    meta = {
        "step": counters["step"],
        "config": config_mod.to_dict(record),
        "optimizers": layouts,
        "counters": {k: v for k, v in counters.items() if k != "step"},
        "scaler": st.scaler.state_dict() if st.scaler is not None else None,
        "format": FORMAT,
        "network_fingerprint": st.network_fingerprint,
    }
    return tensors, meta


def check_base(saved: float | None, current: float | None, record, path: Path) -> None:
    """A LoRA run's adapters were trained on one base: resuming them on other teacher weights (an
    updated snapshot, another directory) is refused in one line."""
    lora = any(getattr(record, name).lora.rank is not None for name in ("generator", "fake_score"))
    if lora and saved is not None and current is not None and not math.isclose(saved, current, rel_tol=1e-9):
        raise OnestepError(f"{path.name}: the teacher's weights differ from those its LoRA adapters were trained on; "
                           f"point teacher.path at that teacher (or start a new run)")


def restore(st: CheckpointState, record, acc, path: Path) -> None:
    """Load ``path`` into the named objects of ``st`` (after checking that ``record``, the run's
    config, allows the resume).

    Sharded: only the main process reads the sharded networks' and optimizers' tensors; they
    reach the other processes' shards by broadcast (no process holds what it does not shard
    besides the main one)."""
    sharded = {name for name, module in st.modules.items() if sharding.is_sharded(module)}
    sharded |= {name for name, (_, owner) in st.optimizers.items() if owner is not None}
    main = acc.is_main_process
    select = None if main or not sharded else (lambda key: key.split(".", 1)[0] not in sharded)
    tensors, raw = load_safetensors(path, select)
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != DIGEST_KEY}
        saved_config, layouts = meta["config"], meta["optimizers"]
    except (ValueError, KeyError):
        raise OnestepError(f"{path} is not an onestep checkpoint (its metadata is not the run's JSON config, "
                           f"step and optimizer state)") from None
    check_resumable(saved_config, record, path)
    check_base(meta.get("network_fingerprint"), st.network_fingerprint, record, path)
    for name, module in st.modules.items():
        if name in sharded:
            _load_sharded(acc, name, tensors, module, path)
        else:
            unpack_module(name, tensors, module)
    for name, (opt, owner) in st.optimizers.items():
        optimizer = _optimizer(opt)
        kept = [{k: group[k] for k in KEPT_GROUP_KEYS if k in group} for group in optimizer.param_groups]
        ok, saved = True, None
        try:
            if owner is None or main:
                saved = unpack_optimizer(name, tensors, layouts[name])
                sharding.check_optimizer_state(optimizer, saved)
        except (KeyError, ValueError, IndexError):
            ok = False
        if owner is not None:  # the main process decides for all
            ok = sharding.true_everywhere(acc, ok)
        if not ok:
            raise OnestepError(f"cannot restore the optimizer state '{name}' from {path}; start a new run")
        if owner is None:
            optimizer.load_state_dict(saved)
        elif sharding.true_everywhere(acc, bool(saved["state"]) if main else True):  # (none before a first step)
            sharding.load_optimizer_state(optimizer, owner, saved if main else None)
        for group, mine in zip(optimizer.param_groups, kept):  # this run's kernel and learning rates
            group.update(mine)
    st.rng.load_state_dict(tensors)
    if meta.get("scaler") and st.scaler is not None:
        st.scaler.load_state_dict(meta["scaler"])
    st.counters.load_state_dict({"step": meta["step"], **meta["counters"]})


def _load_sharded(acc, name: str, tensors: dict[str, torch.Tensor], module, path: Path) -> None:
    """The main process's full state, checked there, broadcast into every process's shards."""
    sub = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
    ok = True
    if acc.is_main_process:
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        ok = expected == {k: tuple(v.shape) for k, v in sub.items()}
    if not sharding.true_everywhere(acc, ok):
        raise OnestepError(f"checkpoint {path} does not match the model for '{name}' (missing, unexpected or "
                           f"other-shaped tensors); was the network or config changed?")
    sharding.load_module_state(module, sub if acc.is_main_process else {})


def check_checkpoint(path: Path, config: config_mod.Config) -> None:
    """Refuse, before anything is built or written, a resume from ``path`` under ``config``."""
    _, raw = safetensors_header(path)
    try:
        saved = json.loads(raw["config"])
    except (KeyError, ValueError):
        raise OnestepError(f"{path} is not an onestep checkpoint (no config in its metadata)") from None
    check_resumable(saved, config, path)


def check_resumable(saved: dict, now: config_mod.Config, path: Path) -> None:
    current = config_mod.to_dict(now)
    try:  # keys added to the schema after the checkpoint was written take their defaults
        saved = config_mod.to_dict(config_mod.from_dict(saved, stored=True))
    except OnestepError:
        pass
    diffs = [k for k in _flat_diff(saved, current) if k not in RESUMABLE_CHANGES]
    diffs.sort(key=lambda k: (k != "objective.name", k.count("."), k))  # the objective itself first
    if diffs:
        raise OnestepError(
            f"cannot resume from {path}: the config differs in {', '.join(diffs[:5])}"
            f"{f' and {len(diffs) - 5} more' if len(diffs) > 5 else ''}; "
            f"use the run's own config.yaml or a new --output directory"
        )


def _flat_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        full = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _flat_diff(va, vb, full + ".")
        elif va != vb:
            out.append(full)
    return out


def truncate_stats(run_dir: Path, step: int, name: str = STATS_FILE) -> None:
    """Drop the rows of a JSON-lines log past ``step`` (written by a run killed after its last
    checkpoint), so a resumed run does not log those steps twice."""
    path = Path(run_dir) / name
    if not path.is_file():
        return
    rows = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    kept = [ln for ln in rows if _row_step(ln) is not None and _row_step(ln) <= step]  # torn rows go too
    if len(kept) != len(rows):
        atomic_write_text("".join(ln + "\n" for ln in kept), path)


def _row_step(line: str) -> int | None:
    try:
        row = json.loads(line)
        return int(row["step"]) if isinstance(row, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
