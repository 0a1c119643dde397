"""DMD / DMD2 distribution matching (Yin et al. 2024, arXiv 2405.14867, Eq. 2; the regression
term is ``regression.weight``, available to every objective).

The reverse-KL gradient ``(s_fake - s_real)``, in denoiser form ``(Df - Dr)``, normalised per
sample by ``wf = mean|x_g - Dr|`` and injected with the surrogate of ``common.inject_gradient``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schema import key
from ..core.tensors import expand
from .common import WEIGHT_NORM_DOC, WeightNorm, inject_gradient, per_sample_norm
from .inputs import ObjectiveInputs
from .registry import register


@dataclass(frozen=True)
class DMDParams:
    weight_norm: WeightNorm = key("wf", WEIGHT_NORM_DOC)


# DMD2's GAN (used when gan.weight > 0): a conv head on the fake score's bottleneck, real and fake
# noised independently on the Karras grid, loss weight 1e-2 next to the fake-score loss
DMD2_RECIPE = {"gan.sigma": "discriminator", "discriminator.features": "fake_score", "discriminator.taps": "mid",
               "discriminator.head": "conv", "discriminator.sigma_sampler": "karras_grid",
               "discriminator.weighting": "none", "discriminator.noise": "independent",
               "discriminator.loss_weight": 1e-2}


@register("dmd", params=DMDParams, sigma_sampler="karras_grid", reduction="mean", recipe=DMD2_RECIPE,
          reference="DMD2, Yin et al. 2024, arXiv 2405.14867")
def dmd_loss(inp: ObjectiveInputs, p: DMDParams) -> torch.Tensor:
    """(B,): surrogate for ``g = (Df - Dr) / wf``."""
    with torch.no_grad():
        norm = per_sample_norm(inp.x_g, inp.Dr, p.weight_norm)
        g = (inp.Df - inp.Dr) / expand(norm, inp.x_g)
    return inject_gradient(inp.x_g, g)
