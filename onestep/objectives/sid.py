"""Score identity Distillation (Zhou et al. 2024, arXiv 2404.04057, Eq. 23 with the Eq. 24 weight).

Per sample, ``<Dr - Df, (Dr - x_g) - alpha (Dr - Df)> / wf`` with gradients through the
inputs of teacher and fake score. With ``alpha = 0.5`` this is ``L_sim + L_fisher`` of
Uni-Instruct with reverse KL (the exact Fisher-divergence gradient); ``alpha = 1.2``
(SiD's practical choice) is ``L_sim - 0.4 L_fisher``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.schema import key
from ..core.tensors import sum_dims
from .common import WEIGHT_NORM_DOC, WeightNorm, per_sample_norm
from .inputs import ObjectiveInputs
from .registry import FAKE, TEACHER, register


@dataclass(frozen=True)
class SiDParams:
    alpha: float = key(1.2, "SiD's alpha (0.5: the exact Fisher-divergence gradient)")
    weight_norm: WeightNorm = key("wf", WEIGHT_NORM_DOC)


@register("sid", params=SiDParams, sigma_sampler="karras", reduction="sum", grad_through=(TEACHER, FAKE),
          reference="SiD, Zhou et al. 2024, arXiv 2404.04057")
def sid_loss(inp: ObjectiveInputs, p: SiDParams) -> torch.Tensor:
    """(B,): ``((Dr - Df) * ((Dr - x_g) - alpha (Dr - Df))).sum(chw) / wf``."""
    delta = inp.Dr - inp.Df
    loss = sum_dims(delta * ((inp.Dr - inp.x_g) - p.alpha * delta))
    return loss / per_sample_norm(inp.x_g, inp.Dr, p.weight_norm)
