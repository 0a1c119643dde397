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

In ``L_di`` and ``L_x`` the direction ``Delta`` stands for ``sigma^2 grad log r`` (at ``x_t``),
which is what it equals when the scores are exact; their coefficients carry ``1 / sigma^2``.
With a learned fake score, ``Delta``'s error (of the order of the fake score's, independent of
sigma) is multiplied by ``1 / sigma^2`` there, cubed in ``L_di``. ``log_ratio_gradient:
discriminator`` takes ``grad log r`` from the discriminator that gives ``r`` (the input-gradient of
its ratio logit, ``ObjectiveInputs.grad_log_r``): the pushes become ``q |Delta|^2 / 2 g`` and
``r h' <Delta, Df - x_g> g`` with ``g = grad log r``, free of ``1 / sigma^2`` and equal to the exact
form wherever the discriminator's ratio is exact (tests/test_gradient_oracle.py proves both). It
is the default; ``scores`` keeps the form above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    log_ratio_gradient: Literal["discriminator", "scores"] = key(
        "discriminator", "grad log r in L_di and L_x: the input-gradient of the discriminator's ratio logit "
        "(discriminator) or (Dr - Df) / sigma^2 (scores: exact with exact scores, but the fake score's error "
        "grows like 1/sigma^2 there); unused with f: rkl")

    @property
    def needs_ratio_gradient(self) -> bool:
        return self.needs_ratio and self.log_ratio_gradient == "discriminator"


def _weights(inp: ObjectiveInputs):
    return inp.weights if inp.weights is not None else f_weights("rkl", torch.zeros_like(inp.sigma))


@torch.no_grad()
def pushes(inp: ObjectiveInputs, p: UniInstructParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_di's push, L_x's push), each (B, ...) and detached: ``q |Delta|^2 / 2 g`` and
    ``r h' <Delta, Df - x_g> g``, ``g = grad log r`` at ``x_t`` (``Delta / sigma^2`` with
    ``log_ratio_gradient: scores``, else ``inp.grad_log_r``); ``sum_dims(push * x_g)`` is the term."""
    w = _weights(inp)
    d = (inp.Dr - inp.Df).detach()
    di_coef = w.q * sum_dims(d**2) / 2
    x_coef = w.rh * sum_dims(d * (inp.Df - inp.x_g).detach())
    if not p.needs_ratio_gradient:  # sigma^2 g = Delta with exact scores
        g = d / expand(inp.sigma**2, d)
    elif inp.grad_log_r is not None:
        g = inp.grad_log_r
    elif bool((w.q != 0).any() or (w.rh != 0).any()):
        raise ValueError("uni_instruct with log_ratio_gradient 'discriminator' needs ObjectiveInputs.grad_log_r")
    else:  # reverse-KL weights (the ratio's warm-up): these terms are zero
        g = torch.zeros_like(d)
    return expand(di_coef, d) * g, expand(x_coef, d) * g


@register("uni_instruct", params=UniInstructParams, sigma_sampler="karras", reduction="sum", grad_through=(TEACHER, FAKE),
          reference="Uni-Instruct, Wang et al. 2025, arXiv 2505.20755")
def uni_instruct_loss(inp: ObjectiveInputs, p: UniInstructParams) -> torch.Tensor:
    """(B,): ``h L_sim + fisher_weight (h - r h') L_fisher + L_di + L_x`` over ``wf``."""
    x_g, w = inp.x_g, _weights(inp)
    delta = inp.Dr - inp.Df
    l_sim = sum_dims(delta * (inp.Df - x_g))
    l_fisher = 0.5 * sum_dims(delta**2)
    di_push, x_push = pushes(inp, p)
    l_push = sum_dims((di_push + x_push) * x_g)  # L_di + L_x
    loss = w.h * l_sim + p.fisher_weight * w.h_minus_rh * l_fisher + l_push
    return loss / per_sample_norm(x_g, inp.Dr, p.weight_norm)
