"""SiDA: SiD with an adversarial term on the fake score's encoder (Zhou et al. 2024, arXiv 2410.14919).

The generator loss is SiD's (``sid.sid_loss``) at alpha 1.0 (SiDA's published runs) plus the
GAN term read at SiD's own ``x_t`` from the same fake-score pass and divided by the same ``wf``.
The discriminator is the fake score's encoder: its logits are the channel mean of the encoder's
output, one per location; its loss is lambda(sigma)-weighted at lognormal sigmas with real and
fake samples sharing sigma and noise, and joins the fake-score loss in one optimizer step. The
recipe below sets those discriminator keys (each can still be overridden).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.schema import key
from .common import WEIGHT_NORM_DOC, WeightNorm
from .registry import FAKE, TEACHER, register
from .sid import sid_loss

SIDA_RECIPE = {
    "gan.weight": 0.01, "gan.sigma": "objective",
    "discriminator.features": "fake_score", "discriminator.taps": "mid", "discriminator.head": "mean",
    "discriminator.sigma_sampler": "lognormal", "discriminator.weighting": "edm", "discriminator.noise": "shared",
    "discriminator.loss_weight": 1.0,
}


@dataclass(frozen=True)
class SiDAParams:
    alpha: float = key(1.0, "SiD's alpha (SiDA's published runs: 1.0)")
    weight_norm: WeightNorm = key("wf", WEIGHT_NORM_DOC)


register("sida", params=SiDAParams, sigma_sampler="karras", reduction="sum", grad_through=(TEACHER, FAKE), requires_gan=True,
         recipe=SIDA_RECIPE, reference="SiDA, Zhou et al. 2024, arXiv 2410.14919")(sid_loss)
