"""DMD's regression term onto teacher ODE pairs (Yin et al. 2023, arXiv 2311.18828, Eq. 7)."""

from __future__ import annotations

import torch

from ..core.tensors import sum_dims


def regression_loss(x_g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``0.5 |G(z) - y(z)|^2`` summed over chw, with the squared L2 distance in place of LPIPS; (B,).
    Its gradient per value is the residual ``G(z) - y``, not divided by chw: the scale of the
    objectives whose registry ``reduction`` is ``sum`` (sid, sida, uni_instruct); next to a ``mean``
    one (dmd, f_distill) a given weight counts chw times more (``registry.gradient_scale``)."""
    return 0.5 * sum_dims((x_g - y.detach()) ** 2)
