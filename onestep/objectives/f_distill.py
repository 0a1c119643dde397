"""f-distill (Xu et al. 2025, arXiv 2502.15681, Eq. 7): f-divergence distribution matching.

``grad_theta D_f(p_sigma || q_sigma) = -E_q[h(r) (s_p - s_q) dx/dtheta]`` with
``h = f''(r) r^2`` and ``r = p/q`` from the discriminator; in denoiser form
``g = h(r) (Df - Dr) / wf``, injected like DMD. Reverse KL (``h = 1``) is DMD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schema import key
from ..core.tensors import expand
from .common import WEIGHT_NORM_DOC, WeightNorm, inject_gradient, per_sample_norm
from .inputs import ObjectiveInputs
from .ratio import RatioWeighted
from .registry import register


@dataclass(frozen=True)
class FDistillParams(RatioWeighted):
    weight_norm: WeightNorm = key("wf", WEIGHT_NORM_DOC)


@register("f_distill", params=FDistillParams, sigma_sampler="karras_grid", reduction="mean",
          reference="f-distill, Xu et al. 2025, arXiv 2502.15681")
def f_distill_loss(inp: ObjectiveInputs, p: FDistillParams) -> torch.Tensor:
    """(B,): surrogate for ``g = h(r) (Df - Dr) / wf``."""
    with torch.no_grad():
        norm = per_sample_norm(inp.x_g, inp.Dr, p.weight_norm)
        g = (inp.Df - inp.Dr) / expand(norm, inp.x_g)
        if inp.weights is not None:
            g = g * expand(inp.weights.h, g)
    return inject_gradient(inp.x_g, g)
