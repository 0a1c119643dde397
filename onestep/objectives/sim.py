"""Score Implicit Matching (Luo et al. 2024, arXiv 2410.16794, Thm. 3.1) with pseudo-Huber distance.

SIM's divergence ``E_{x ~ sg(q_sigma)}[phi(s_p - s_q)]`` with ``phi(y) = sqrt(|y|^2 + c^2) - c``.
By the score-projection identity its gradient is that of ``<phi'(d), (Df - x_g) / sigma^2>``
with ``d = Delta / sigma^2`` and gradients through the inputs of both networks (derived in
docs/design.md section 3), i.e. per sample
``<Delta, Df - x_g> / (sigma^2 sqrt(|Delta|^2 + (c sigma^2)^2))``.

``phi'`` is bounded but ``(Df - x_g) / sigma^2`` grows like ``1/sigma``, so the practical
loss carries the time weighting ``w(sigma) = sigma^2`` (``sigma_weighting="sigma2"``, the
default; SIM leaves ``w`` free): each sample's gradient is then of the order of the data,
as in DMD. ``"none"`` is the divergence's exact gradient at a fixed sigma (the oracle test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..core.schema import key
from ..core.tensors import sum_dims
from .inputs import ObjectiveInputs
from .registry import FAKE, TEACHER, register


@dataclass(frozen=True)
class SIMParams:
    c: float = key(1.0, "SIM's pseudo-Huber constant", gt=0)
    sigma_weighting: Literal["sigma2", "none"] = key("sigma2", "time weighting w(sigma) of SIM's loss")


@register("sim", params=SIMParams, sigma_sampler="karras", reduction="l2", grad_through=(TEACHER, FAKE),
          reference="SIM, Luo et al. 2024, arXiv 2410.16794")
def sim_loss(inp: ObjectiveInputs, p: SIMParams) -> torch.Tensor:
    """(B,): ``w(sigma) <Delta, Df - x_g> / (sigma^2 sqrt(|Delta|^2 + (c sigma^2)^2))``."""
    delta = inp.Dr - inp.Df
    s2 = inp.sigma**2
    denom = s2 * (sum_dims(delta**2) + (p.c * s2) ** 2).sqrt()
    loss = sum_dims(delta * (inp.Df - inp.x_g)) / denom
    return loss * s2 if p.sigma_weighting == "sigma2" else loss
