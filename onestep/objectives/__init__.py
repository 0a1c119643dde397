"""Generator objectives: pure loss functions and their registry."""

from .common import (
    ObjectiveInputs,
    fake_score_loss,
    inject_gradient,
    regression_loss,
    wf_normaliser,
)
from .fdiv import F_NAMES, FWeights, f_value, f_weights
from .ratio import RatioParams, divergence_weights
from .registry import REGISTRY, ObjectiveSpec, get, resolve, table

__all__ = [
    "F_NAMES", "FWeights", "ObjectiveInputs", "ObjectiveSpec", "REGISTRY", "RatioParams",
    "divergence_weights", "f_value", "f_weights", "fake_score_loss", "get", "inject_gradient",
    "regression_loss", "resolve", "table", "wf_normaliser",
]
