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


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    fn: Callable[[ObjectiveInputs, object], torch.Tensor]
    params: type
    grad_through: frozenset[str]
    sigma_sampler: str
    reference: str
    requires_gan: bool = False  # the objective is defined with the GAN term (gan.weight > 0)
    # defaults of null gan.* / discriminator.* keys for this objective, e.g. {"gan.weight": 0.01}
    recipe: dict = field(default_factory=dict)

    def needs_ratio(self, params) -> bool:
        """True when the weights depend on the density ratio (any f but reverse KL)."""
        return bool(getattr(params, "needs_ratio", False))


REGISTRY: dict[str, ObjectiveSpec] = {}


def register(name: str, *, params: type, sigma_sampler: str, reference: str, grad_through=(),
             requires_gan: bool = False, recipe: dict | None = None):
    """Decorator: register the loss function under ``name``."""

    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"objective '{name}' registered twice")
        REGISTRY[name] = ObjectiveSpec(name, fn, params, frozenset(grad_through), sigma_sampler, reference,
                                       requires_gan, dict(recipe or {}))
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
    rows = [("name", "parameters (defaults)", "grad through", "sigma", "reference")]
    for spec in REGISTRY.values():
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(spec.params) if f.name not in hidden)
        if spec.requires_gan:
            params = (params + ", " if params else "") + "gan.weight>0"
        through = "+".join(sorted(spec.grad_through)) or "none"
        rows.append((spec.name, params or "-", through, spec.sigma_sampler, spec.reference))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for spec in REGISTRY.values():
        if spec.recipe:
            lines += ["", f"{spec.name} recipe (null gan/discriminator keys): "
                      + ", ".join(f"{k}={v}" for k, v in spec.recipe.items())]
    lines += ["", f"f ({', '.join(_takes('f'))}): {', '.join(F_NAMES)}; f_alpha sets the alpha-divergence exponent.",
              f"Ratio keys ({', '.join(_takes(ratio_keys[0]))}): {', '.join(ratio_keys)}; "
              f"weight_norm ({', '.join(_takes('weight_norm'))}): {' | '.join(WeightNorm.__args__)}."]
    return "\n".join(lines)
