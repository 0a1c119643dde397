"""DMD / DMD2 distribution matching (Yin et al. 2024, arXiv 2405.14867, Eq. 2; no regression loss).

The reverse-KL gradient ``(s_fake - s_real)``, in denoiser form ``(Df - Dr)``, normalised per
sample by ``wf = mean|x_g - Dr|`` and injected with the surrogate of ``common.inject_gradient``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import ObjectiveInputs, expand, inject_gradient, per_sample_norm


@dataclass(frozen=True)
class DMDParams:
    weight_norm: str = "wf"


def dmd_loss(inp: ObjectiveInputs, p: DMDParams) -> torch.Tensor:
    """(B,): surrogate for ``g = (Df - Dr) / wf``."""
    with torch.no_grad():
        norm = per_sample_norm(inp.x_g, inp.Dr, p.weight_norm)
        g = (inp.Df - inp.Dr) / expand(norm, inp.x_g)
    return inject_gradient(inp.x_g, g)
