"""Adversarial losses on a discriminator's logits (the logit also estimates log p_teacher / q_generator).

A logistic discriminator trained with ``discriminator_loss`` ("real": data, exact or teacher
samples; "fake": generator samples, both noised to sigma) has the optimum
``logit = log p_real,sigma / q_fake,sigma``: the density ratio f-distill and Uni-Instruct weight
by (arXiv 2502.15681, Sec. 4), and the logit of the non-saturating GAN term of DMD2 and SiDA.
Logits are (B, L): one per head or per location; each loss averages over L (a patch
discriminator's per-location BCE, as SiDA), the ratio reads ``ratio_logit``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(1) if t.ndim > 1 else t


def ratio_logit(logits: torch.Tensor) -> torch.Tensor:
    """The log-ratio estimate per sample: the mean of its logits; (B, L) -> (B,)."""
    return _per_sample(logits)


def discriminator_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
    """Logistic loss ``softplus(-l_real) + softplus(l_fake)``, averaged over each sample's logits; (B,)."""
    return _per_sample(F.softplus(-logit_real)) + _per_sample(F.softplus(logit_fake))


def generator_gan_loss(logit_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``softplus(-l(x_g + sigma n))`` (Goodfellow et al. 2014); (B,)."""
    return _per_sample(F.softplus(-logit_fake))


def r1_penalty(logit_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty ``|grad_x l(x_real)|^2`` (Mescheder et al. 2018); (B,). x_real needs grad."""
    (grad,) = torch.autograd.grad(ratio_logit(logit_real).sum(), x_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)


def accuracy(logit_real: torch.Tensor, logit_fake: torch.Tensor) -> float:
    """Fraction of samples classified right by the sign of their ratio logit (real > 0, fake < 0)."""
    right = (ratio_logit(logit_real) > 0).float().sum() + (ratio_logit(logit_fake) < 0).float().sum()
    return float(right) / (len(logit_real) + len(logit_fake))
