"""Rebuild a denoiser network from its JSON spec (saved in every run directory).

Each network class provides ``spec() -> dict`` (JSON-able) and is rebuilt here, so a run
can be sampled or exported without reloading (or re-fitting) its teacher.
"""

from __future__ import annotations

from ..errors import OnestepError
from .denoiser import Denoiser
from .diffusers_unet import DiffusersDenoiser
from .mlp import MLPDenoiser


def build_network(spec: dict) -> Denoiser:
    """The (untrained) network a spec describes; one-line error for an unknown or malformed spec."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    try:
        if kind == "mlp":
            return MLPDenoiser(**spec["config"])
        if kind == "diffusers":
            return DiffusersDenoiser.from_spec(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise OnestepError(f"malformed {kind} network spec ({type(exc).__name__}: {exc})") from None
    raise OnestepError(f"unknown network type {kind!r} in the network spec (known: mlp, diffusers)")
