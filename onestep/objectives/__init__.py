"""Generator objectives: pure loss functions of tensors, each registered where it is defined.

Importing this package registers every objective (one import line per objective file).
"""

# registration, in the order `onestep objectives` lists them
from . import diff_instruct, dmd, sid, sida, sim, f_distill, uni_instruct  # noqa: F401, I001
from .common import inject_gradient, per_sample_norm, wf_normaliser
from .denoising import fake_score_loss
from .fdiv import F_NAMES, FWeights, f_value, f_weights
from .gan import discriminator_loss, generator_gan_loss, r1_penalty, ratio_logit
from .inputs import ObjectiveInputs
from .ratio import RatioParams, RatioWeighted, divergence_weights
from .registry import REGISTRY, ObjectiveSpec, available, get, table
from .regression import regression_loss

__all__ = [
    "F_NAMES", "FWeights", "ObjectiveInputs", "ObjectiveSpec", "REGISTRY", "RatioParams", "RatioWeighted",
    "available", "discriminator_loss", "divergence_weights", "f_value", "f_weights", "fake_score_loss",
    "generator_gan_loss", "get", "ratio_logit", "inject_gradient", "per_sample_norm", "r1_penalty", "regression_loss", "table",
    "wf_normaliser",
]
