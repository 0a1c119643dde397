"""Diff-Instruct (Luo et al. 2023, arXiv 2305.18455, Eq. 3.3): the integral KL gradient.

``grad_theta KL(q_sigma || p_sigma) = E[(s_q - s_p)(x_t) dx_t/dtheta]``; with denoisers,
``s_q - s_p = (Df - Dr) / sigma^2``. The per-sample loss ``<sg(Df - Dr), x_g>`` has
gradient ``Df - Dr`` (``sigma^2`` times the KL gradient, EDM-style weighting).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.tensors import sum_dims
from .inputs import ObjectiveInputs
from .registry import register


@dataclass(frozen=True)
class DiffInstructParams:
    pass


@register("diff_instruct", params=DiffInstructParams, sigma_sampler="lognormal", reduction="sum",
          reference="Diff-Instruct, Luo et al. 2023, arXiv 2305.18455")
def diff_instruct_loss(inp: ObjectiveInputs, p: DiffInstructParams) -> torch.Tensor:
    """(B,): ``((Df - Dr) * x_g).sum(chw)`` with Df, Dr detached."""
    return sum_dims((inp.Df - inp.Dr).detach() * inp.x_g)
