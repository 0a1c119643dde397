"""The objective registry: every generator objective by name, with its metadata.

An entry says which pure loss function to call, its parameter dataclass, which frozen
networks the generator gradient flows through (via their inputs), the default sigma
sampler, whether it needs the density-ratio head or the GAN term, and its paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import OnestepError
from .common import ObjectiveInputs
from .diff_instruct import DiffInstructParams, diff_instruct_loss
from .dmd import DMDParams, dmd_loss
from .f_distill import FDistillParams, f_distill_loss
from .fdiv import F_NAMES
from .ratio import RatioParams
from .sid import SiDParams, sid_loss
from .sim import SIMParams, sim_loss
from .uni_instruct import UniInstructParams, uni_instruct_loss

TEACHER, FAKE = "teacher", "fake_score"


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[[ObjectiveInputs, object], torch.Tensor]
    params: type
    grad_through: frozenset[str]
    sigma_sampler: str
    reference: str
    requires_gan: bool = False
    gan_features: str = "teacher"  # default source of the head's features
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def needs_ratio(self, params) -> bool:
        """True when the weights depend on r (any f but reverse KL)."""
        return getattr(params, "f", "rkl") != "rkl"


REGISTRY: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"objective '{spec.name}' registered twice")
    REGISTRY[spec.name] = spec
    return spec


register(ObjectiveSpec(
    "diff_instruct", diff_instruct_loss, DiffInstructParams, frozenset(), "lognormal",
    "Diff-Instruct, Luo et al. 2023, arXiv 2305.18455",
))
register(ObjectiveSpec(
    "dmd", dmd_loss, DMDParams, frozenset(), "karras_grid",
    "DMD2, Yin et al. 2024, arXiv 2405.14867", gan_features=FAKE,
))
register(ObjectiveSpec(
    "sid", sid_loss, SiDParams, frozenset({TEACHER, FAKE}), "karras",
    "SiD, Zhou et al. 2024, arXiv 2404.04057",
))
register(ObjectiveSpec(
    "sida", sid_loss, SiDParams, frozenset({TEACHER, FAKE}), "karras",
    "SiDA, Zhou et al. 2024, arXiv 2410.14919", requires_gan=True, gan_features=FAKE,
    notes="SiD + GAN term on fake-score features",
))
register(ObjectiveSpec(
    "sim", sim_loss, SIMParams, frozenset({TEACHER, FAKE}), "karras",
    "SIM, Luo et al. 2024, arXiv 2410.16794", notes="pseudo-Huber distance, constant c",
))
register(ObjectiveSpec(
    "f_distill", f_distill_loss, FDistillParams, frozenset(), "karras_grid",
    "f-distill, Xu et al. 2025, arXiv 2502.15681",
))
register(ObjectiveSpec(
    "uni_instruct", uni_instruct_loss, UniInstructParams, frozenset({TEACHER, FAKE}), "karras",
    "Uni-Instruct, Wang et al. 2025, arXiv 2505.20755",
))

# ObjectiveConfig fields that only some objectives take (None in the config = default).
_SPECIFIC = ("f", "f_alpha", "alpha", "c", "fisher_weight", "sigma_weighting")


def get(name: str) -> ObjectiveSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise OnestepError(
            f"unknown objective '{name}' (valid: {', '.join(REGISTRY)}); see `onestep objectives`"
        ) from None


def resolve(cfg) -> tuple[ObjectiveSpec, object]:
    """Objective spec and parameter instance for an ``ObjectiveConfig``; errors name the key."""
    spec = get(cfg.name)
    names = {f.name for f in dataclasses.fields(spec.params)}
    kwargs = {}
    for key in _SPECIFIC:
        value = getattr(cfg, key)
        if value is None:
            continue
        if key not in names:
            raise OnestepError(
                f"config key 'objective.{key}' is not a parameter of '{spec.name}' "
                f"(its parameters: {', '.join(sorted(names & set(_SPECIFIC))) or 'none'})"
            )
        kwargs[key] = value
    if "f" in kwargs and kwargs["f"] not in F_NAMES:
        raise OnestepError(f"config key 'objective.f': unknown divergence '{kwargs['f']}' (valid: {', '.join(F_NAMES)})")
    if kwargs.get("f") != "alpha" and "f_alpha" in kwargs:
        raise OnestepError("config key 'objective.f_alpha' is only used with objective.f: alpha")
    if "f_alpha" in kwargs and kwargs["f_alpha"] in (0.0, 1.0):
        raise OnestepError("config key 'objective.f_alpha': 0 and 1 are the KL limits; use f: rkl or fkl")
    if "weight_norm" in names:
        kwargs["weight_norm"] = cfg.weight_norm
    if "ratio" in names:
        lo, hi = (cfg.ratio_clip + [None, None])[:2]
        if lo is None or hi is None or not 0 < lo < hi:
            raise OnestepError(f"config key 'objective.ratio_clip': expected [lo, hi] with 0 < lo < hi, got {cfg.ratio_clip}")
        kwargs["ratio"] = RatioParams(cfg.logit_clip, (lo, hi), cfg.ratio_bins, cfg.normalize_weights)
    return spec, spec.params(**kwargs)


def table() -> str:
    """Human-readable table of the registry (for ``onestep objectives``)."""
    rows = [("name", "parameters (defaults)", "grad through", "sigma", "reference")]
    for spec in REGISTRY.values():
        params = ", ".join(
            f"{f.name}={f.default}" for f in dataclasses.fields(spec.params) if f.name != "ratio"
        )
        if spec.requires_gan:
            params = (params + ", " if params else "") + "gan.weight>0"
        through = "+".join(sorted(spec.grad_through)) or "none"
        rows.append((spec.name, params or "-", through, spec.sigma_sampler, spec.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"f (f_distill, uni_instruct): {', '.join(F_NAMES)}; f_alpha sets the alpha-divergence exponent.")
    return "\n".join(lines)
