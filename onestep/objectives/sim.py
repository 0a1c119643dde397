"""Score Implicit Matching (Luo et al. 2024, arXiv 2410.16794, Thm. 3.1) with pseudo-Huber distance.

SIM's divergence ``E_{x ~ sg(q_sigma)}[phi(s_p - s_q)]`` with ``phi(y) = sqrt(|y|^2 + c^2) - c``.
By the score-projection identity its gradient is that of
``<sg-free phi'(d), (Df - x_g) / sigma^2>`` with ``d = Delta / sigma^2`` and gradients
through the inputs of both networks (derived in DESIGN.md section 3), i.e. per sample
``<Delta, Df - x_g> / (sigma^2 sqrt(|Delta|^2 + (c sigma^2)^2))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import ObjectiveInputs, sum_dims


@dataclass(frozen=True)
class SIMParams:
    c: float = 1.0


def sim_loss(inp: ObjectiveInputs, p: SIMParams) -> torch.Tensor:
    """(B,): pseudo-Huber SIM loss (no extra normaliser: phi' is bounded)."""
    delta = inp.Dr - inp.Df
    s2 = inp.sigma**2
    denom = s2 * (sum_dims(delta**2) + (p.c * s2) ** 2).sqrt()
    return sum_dims(delta * (inp.Df - inp.x_g)) / denom
