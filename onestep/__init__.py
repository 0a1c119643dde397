"""onestep: distill a pretrained diffusion model into a one-step generator.

The public API (imported lazily, so ``import onestep`` stays cheap):

- ``load_config(path, overrides)``, ``Config``: the validated run configuration;
- ``build_trainer(config, run_dir)`` -> ``Trainer`` (``.fit()``, ``.iteration()``): distillation;
- ``available_objectives()``: the registered objective names (``onestep objectives`` prints
  their table; ``onestep.objectives`` is the package that defines them);
- ``OneStepPipeline``: the exported one-step diffusers pipeline;
- ``load_generator(run_dir, ema)``, ``export_run(run_dir, output)``: finished runs.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_API = {
    "Config": ("onestep.config", "Config"),
    "load_config": ("onestep.build", "load_config"),
    "build_trainer": ("onestep.build", "build_trainer"),
    "build_teacher": ("onestep.build", "build_teacher"),
    "Trainer": ("onestep.train.trainer", "Trainer"),
    "OneStepPipeline": ("onestep.portable.pipeline", "OneStepPipeline"),
    "load_generator": ("onestep.runs", "load_generator"),
    "export_run": ("onestep.export", "export_run"),
    "OnestepError": ("onestep.errors", "OnestepError"),
}

__all__ = [*_API, "available_objectives"]


def available_objectives() -> list[str]:
    """Names of the registered generator objectives."""
    from .objectives import available

    return available()


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'onestep' has no attribute '{name}'")
