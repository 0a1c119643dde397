"""Rebuild a denoiser network from its JSON spec (saved in every run directory).

Each network class provides ``spec() -> dict`` (JSON-able) and is rebuilt here, so a run
can be sampled or exported without reloading (or re-fitting) its teacher.
"""

from __future__ import annotations

from torch import nn

from .errors import OnestepError

NETWORK_FILE = "network.json"


def network_spec(network: nn.Module) -> dict:
    return network.spec()


def build_network(spec: dict) -> nn.Module:
    kind = spec.get("type")
    if kind == "mlp":
        from .mlp import MLPDenoiser

        return MLPDenoiser(**spec["config"])
    if kind == "diffusers":
        from .diffusers_denoiser import DiffusersDenoiser

        return DiffusersDenoiser.from_spec(spec)
    raise OnestepError(f"unknown network type {kind!r} in {NETWORK_FILE}")
