"""Uni-Instruct (Wang et al. 2025, arXiv 2505.20755): the f-divergence expansion, made exact.

``D_f(p_0 || q_0) = D_f(p_T || q_T) + int sigma E_q[h(r) |s_p - s_q|^2] dsigma``; the
gradient of the per-sigma integrand ``E_q[h(r) |s_p - s_q|^2]`` (times ``sigma^4 / 2``)
is, per sample (docs/design.md section 3; all weights detached):

- ``L_sim    = <Delta, Df - x_g>``                      (through teacher and fake inputs)
- ``L_fisher = 0.5 |Delta|^2``                          (through teacher and fake inputs)
- ``L_di     = <sg(q |Delta|^2 / (2 sigma^2) Delta), x_g>``
- ``L_x      = <sg(r h' <Delta, Df - x_g> / sigma^2 Delta), x_g>``
- ``loss = h L_sim + fisher_weight (h - r h') L_fisher + L_di + L_x``, over ``wf``.

``fisher_weight = 1`` is exact; ``fisher_weight = 2 (1 - alpha)`` with reverse KL is SiD(alpha).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schema import key
from ..core.tensors import expand, sum_dims
from .common import WEIGHT_NORM_DOC, WeightNorm, per_sample_norm
from .fdiv import f_weights
from .inputs import ObjectiveInputs
from .ratio import RatioWeighted
from .registry import FAKE, TEACHER, register


@dataclass(frozen=True)
class UniInstructParams(RatioWeighted):
    fisher_weight: float = key(1.0, "weight of L_fisher (1: exact; 2 (1 - alpha): SiD(alpha) with rkl)")
    weight_norm: WeightNorm = key("wf", WEIGHT_NORM_DOC)


@register("uni_instruct", params=UniInstructParams, sigma_sampler="karras", grad_through=(TEACHER, FAKE),
          reference="Uni-Instruct, Wang et al. 2025, arXiv 2505.20755")
def uni_instruct_loss(inp: ObjectiveInputs, p: UniInstructParams) -> torch.Tensor:
    """(B,): ``h L_sim + fisher_weight (h - r h') L_fisher + L_di + L_x`` over ``wf``."""
    x_g, sigma = inp.x_g, inp.sigma
    w = inp.weights if inp.weights is not None else f_weights("rkl", torch.zeros_like(sigma))
    delta = inp.Dr - inp.Df
    l_sim = sum_dims(delta * (inp.Df - x_g))
    l_fisher = 0.5 * sum_dims(delta**2)
    with torch.no_grad():
        d = delta.detach()
        s2 = sigma**2
        di_coef = w.q * sum_dims(d**2) / (2 * s2)
        x_coef = w.rh * sum_dims(d * (inp.Df - x_g).detach()) / s2
        push = expand(di_coef + x_coef, d) * d
    l_push = sum_dims(push * x_g)  # L_di + L_x
    loss = w.h * l_sim + p.fisher_weight * w.h_minus_rh * l_fisher + l_push
    return loss / per_sample_norm(x_g, inp.Dr, p.weight_norm)
