"""The objective registry: every generator objective by name, registered where it is defined.

An objective is a pure loss function ``fn(inputs: ObjectiveInputs, params) -> (B,)`` plus its
frozen parameters dataclass (fields with defaults, domains and docs: they are the config keys
of the ``objective:`` section). ``@register`` records which frozen networks the generator
gradient flows through (via their inputs), the default sigma sampler, what the objective
needs from the discriminator, and its paper. Adding an objective is one file and one import
line in ``objectives/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import OnestepError
from .fdiv import F_NAMES
from .inputs import ObjectiveInputs

TEACHER, FAKE = "teacher", "fake_score"

# How an objective reduces one sample's generator gradient over its C x H x W values (``reduction``):
#   mean  each value's gradient is divided by their number (dmd, f_distill: DMD2's injected surrogate)
#   sum   it is not (diff_instruct, sid, sida, uni_instruct: inner products summed over the values)
#   l2    it is divided by the L2 norm of the score difference over the values (sim's pseudo-Huber)
# The added terms (regression's summed residual, the GAN term) keep one weight's meaning only within
# one reduction: ``gradient_scale`` converts between them (docs/objectives.md, "Added terms").
REDUCTIONS = ("mean", "sum", "l2")


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[[ObjectiveInputs, object], torch.Tensor]
    params: type
    grad_through: frozenset[str]
    sigma_sampler: str
    reference: str
    reduction: str  # one of REDUCTIONS: how a sample's gradient is reduced over its values
    requires_gan: bool = False  # the objective is defined with the GAN term (gan.weight > 0)
    # defaults of null gan.* / discriminator.* keys for this objective, e.g. {"gan.weight": 0.01}
    recipe: dict = field(default_factory=dict)

    def needs_ratio(self, params) -> bool:
        """True when the weights depend on the density ratio (any f but reverse KL)."""
        return bool(getattr(params, "needs_ratio", False))


REGISTRY: dict[str, ObjectiveSpec] = {}


def register(name: str, *, params: type, sigma_sampler: str, reference: str, reduction: str, grad_through=(),
             requires_gan: bool = False, recipe: dict | None = None):
    """Decorator: register the loss function under ``name``; ``reduction`` is one of ``REDUCTIONS``
    (checked against each objective's gradient in tests/test_objective_invariants.py)."""

    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"objective '{name}' registered twice")
        if reduction not in REDUCTIONS:
            raise ValueError(f"objective '{name}': reduction must be one of {REDUCTIONS}, not {reduction!r}")
        REGISTRY[name] = ObjectiveSpec(name, fn, params, frozenset(grad_through), sigma_sampler, reference,
                                       reduction, requires_gan, dict(recipe or {}))
        return fn

    return deco


def available() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> ObjectiveSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise OnestepError(
            f"unknown objective '{name}' (valid: {', '.join(REGISTRY)}); see `onestep objectives`"
        ) from None


def gradient_scale(name: str, values: int) -> float:
    """The size of objective ``name``'s per-value generator gradient on samples of ``values`` values
    (C x H x W), relative to a summed one: 1 / values (``mean``), 1 (``sum``), 1 / sqrt(values)
    (``l2``, of that order: each value's share of a unit-norm direction). A weight of an added term
    set next to objective ``a`` keeps its balance next to ``b`` when multiplied by
    ``gradient_scale(b, values) / gradient_scale(a, values)``."""
    reduction = get(name).reduction
    return {"mean": 1.0 / values, "sum": 1.0, "l2": values**-0.5}[reduction]


def parameter_names() -> set[str]:
    """Every parameter name of every registered objective."""
    return {f.name for spec in REGISTRY.values() for f in dataclasses.fields(spec.params)}


def _takes(name: str) -> list[str]:
    """The objectives with a parameter ``name``."""
    return [spec.name for spec in REGISTRY.values() if name in {f.name for f in dataclasses.fields(spec.params)}]


def table() -> str:
    """Human-readable table of the registry (for ``onestep objectives``), from the objectives' own
    parameters: the ratio's keys of ``RatioWeighted`` and ``weight_norm`` are listed once below."""
    from .common import WeightNorm
    from .ratio import RatioWeighted

    ratio_keys = [f.name for f in dataclasses.fields(RatioWeighted) if f.name not in ("f", "f_alpha")]
    hidden = {*ratio_keys, "weight_norm"}
    rows = [("name", "parameters (defaults)", "grad through", "sigma", "values", "reference")]
    for spec in REGISTRY.values():
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(spec.params) if f.name not in hidden)
        if spec.requires_gan:
            params = (params + ", " if params else "") + "gan.weight>0"
        through = "+".join(sorted(spec.grad_through)) or "none"
        rows.append((spec.name, params or "-", through, spec.sigma_sampler, spec.reduction, spec.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for spec in REGISTRY.values():
        if spec.recipe:
            lines += ["", f"{spec.name} recipe (null gan/discriminator keys): "
                      + ", ".join(f"{k}={v}" for k, v in spec.recipe.items())]
    lines += ["", f"f ({', '.join(_takes('f'))}): {', '.join(F_NAMES)}; f_alpha sets the alpha-divergence exponent.",
              f"Ratio keys ({', '.join(_takes(ratio_keys[0]))}): {', '.join(ratio_keys)}; "
              f"weight_norm ({', '.join(_takes('weight_norm'))}): {' | '.join(WeightNorm.__args__)}.",
              "values: how a sample's generator gradient is reduced over its C x H x W values (mean: divided by"
              " their number; sum: not; l2: by the score difference's norm); gan.weight and regression.weight"
              " keep their balance only within one (docs/objectives.md, Added terms)."]
    return "\n".join(lines)
