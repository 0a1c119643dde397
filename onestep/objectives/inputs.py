"""What every generator objective reads (DESIGN notation, docs/design.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fdiv import FWeights


@dataclass
class ObjectiveInputs:
    """Shapes: x_* (B, ...), sigma (B,).

    ``x_g`` generator samples; ``Dr = teacher(x_t)`` and ``Df = fake_score(x_t)`` at
    ``x_t = x_g + sigma n``. ``Dr`` / ``Df`` carry gradients to ``x_g`` through the networks'
    inputs exactly when the objective's ``grad_through`` names them; ``weights`` are the
    (detached, normalised) f-divergence weights at ``x_t`` (None for objectives that need none);
    ``grad_log_r`` (B, ...) the discriminator's estimate of ``grad_x log r`` at ``x_t``, detached
    (None unless the objective asks for it: ``params.needs_ratio_gradient``).
    """

    x_g: torch.Tensor
    sigma: torch.Tensor
    Dr: torch.Tensor
    Df: torch.Tensor
    weights: FWeights | None = None
    grad_log_r: torch.Tensor | None = None
