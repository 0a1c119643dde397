"""The ``objective:`` section: keys every objective shares, then the chosen objective's own
parameters (its registered dataclass), written flat in YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..core import schema
from ..core.schema import key
from ..errors import OnestepError
from ..objectives import registry

SigmaSampler = Literal["lognormal", "karras", "karras_grid"]  # core.schedule.SAMPLERS


GENERAL_OBJECTIVE_KEYS = ("name", "sigma_sampler", "sigma_range", "fake_sigma_sampler", "stratified_sigma",
                          "ratio_warmup")


@dataclass
class ObjectiveConfig:
    """The generator objective: keys every objective shares, and ``params``, the chosen
    objective's own parameters (written flat in YAML: ``objective: {name: sid, alpha: 1.2}``)."""

    name: str = key("dmd", "objective (see `onestep objectives`)")
    sigma_sampler: SigmaSampler | None = key(None, "override the objective's sigma sampler")
    sigma_range: list[float] | None = key(
        None, "[u_lo, u_hi] in [0, 1] (karras) or [j_lo, j_hi] in 0..999 (karras_grid)", length=2, ge=0)
    fake_sigma_sampler: Literal["lognormal", "generator"] = key(
        "lognormal", "sigmas of the fake-score loss: lognormal (EDM) or the objective's own (SiD, DMD2)")
    stratified_sigma: bool = key(False, "one quantile slot of each sigma sampler per batch element")
    ratio_warmup: int | None = key(
        None, "with a learned ratio: generator steps with reverse-KL weights first (null: 10% of train.steps)", ge=0)
    params: dict = field(default_factory=dict, metadata={"doc": "the objective's own parameters"})

    def __getattr__(self, name: str) -> Any:
        # objective parameters read like section keys: cfg.objective.f; None where the chosen
        # objective has no such parameter (as for a key left at the objective's default)
        if name.startswith("__") or name == "params":
            raise AttributeError(name)
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        if name in registry.parameter_names():
            return None
        raise AttributeError(f"'ObjectiveConfig' has no key '{name}'")

    def resolve(self) -> tuple[registry.ObjectiveSpec, Any]:
        """The registered objective and its parameters instance."""
        spec = registry.get(self.name)
        return spec, spec.params(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.params.items()})


def build_objective(data: Any, stored: bool = False) -> ObjectiveConfig:
    """The ``objective`` section: shared keys, then the named objective's own parameters.

    ``stored``: a config written by onestep 0.1 (inside its checkpoints), whose objective section
    held every objective's parameters (null where unset): those of other objectives are dropped.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OnestepError(f"config section 'objective': expected a mapping of keys, got {data!r}")
    shared = {k: v for k, v in data.items() if k in GENERAL_OBJECTIVE_KEYS}
    own = {k: v for k, v in data.items() if k not in GENERAL_OBJECTIVE_KEYS}
    if "params" in own:
        raise OnestepError("config key 'objective.params': write the objective's parameters directly in "
                           "the objective section (e.g. objective.alpha)")
    cfg = schema.build(ObjectiveConfig, shared, "objective")
    spec = registry.get(cfg.name)
    names = [f.name for f in dataclasses.fields(spec.params)]
    if stored:
        own = {k: v for k, v in own.items() if v is not None and (k in names or k not in registry.parameter_names())}
    else:  # another objective's parameter set to null is unset (``--set objective.name=dmd objective.f=null``)
        own = {k: v for k, v in own.items() if v is not None or k in names or k not in registry.parameter_names()}
    for k in own:
        if k not in names:
            if k in registry.parameter_names():
                raise OnestepError(f"config key 'objective.{k}' is not a parameter of '{spec.name}' "
                                   f"(its parameters: {', '.join(names) or 'none'})")
            valid = ", ".join(list(GENERAL_OBJECTIVE_KEYS) + names)
            raise OnestepError(f"unknown config key 'objective.{k}' (valid keys here: {valid})")
    params = schema.build(spec.params, own, "objective")
    if "f_alpha" in own and getattr(params, "f", None) != "alpha" and not stored:  # (even at its default)
        raise OnestepError(f"config key 'objective.f_alpha' is only used with objective.f: alpha (here f: "
                           f"{getattr(params, 'f', None)}); drop it or set f: alpha")
    cfg.params = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()
                  if not (k == "f_alpha" and getattr(params, "f", None) != "alpha")}  # (written only where it acts)
    return cfg


