"""Adversarial losses on a discriminator's logits (the logit also estimates log p_teacher / q_generator).

A logistic discriminator trained with ``discriminator_loss`` (teacher or data samples "real",
generator samples "fake") has the optimum ``logit = log p_real / q_fake`` at each noise level,
the density ratio f-distill weights read (arXiv 2502.15681, Sec. 4); the same logit gives the
non-saturating generator loss of DMD2 and SiDA.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """Logistic loss ``softplus(-l_real) + softplus(l_fake)``; (B,)."""
    return F.softplus(-logit_real) + F.softplus(logit_fake)


def generator_gan_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-l(x_g + sigma n))`` (Goodfellow et al. 2014); (B,)."""
    return F.softplus(-logit_fake)


def r1_penalty(logit_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty ``|grad_x l(x_real)|^2`` (Mescheder et al. 2018); (B,). x_real needs grad."""
    (grad,) = torch.autograd.grad(logit_real.sum(), x_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)
