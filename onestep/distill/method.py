"""One distillation iteration as losses: the generator loss and the fake-score (+ discriminator) loss.

docs/design.md section 4: ``z -> generator -> x_g -> sigma, x_t -> teacher / fake_score
(gradients through their inputs per the objective) -> objective (+ GAN, regression) ->
generator loss``, then ``x_g.detach() -> fake_score denoising loss (+ discriminator loss)``.
Everything random comes from ``GlobalDraws``; the caller owns optimizers, autocast and the
backward pass (``train.Trainer``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.modules import frozen
from ..core.schedule import ScheduleConfig
from ..core.tensors import cat_cond, expand
from ..nets.denoiser import call_fp32
from ..objectives import (
    ObjectiveInputs,
    divergence_weights,
    f_weights,
    fake_score_loss,
    generator_gan_loss,
    per_sample_norm,
    ratio_logit,
    regression_loss,
)
from ..objectives.registry import FAKE, TEACHER
from .critic import CriticLoss
from .draws import GlobalDraws
from .plan import NetworkCall, Plan

AutocastFactory = Callable[[], contextlib.AbstractContextManager]


@dataclass
class Networks:
    """The trainable networks as the loop runs them (possibly wrapped for data parallelism) and
    as plain modules (for calls that must not synchronise gradients)."""

    generator: nn.Module
    fake_score: nn.Module
    discriminator: nn.Module | None
    plain_generator: nn.Module
    plain_fake_score: nn.Module
    plain_discriminator: nn.Module | None


@dataclass
class GeneratorLoss:
    loss: torch.Tensor  # scalar: objective + gan.weight * GAN + regression.weight * regression
    stats: dict[str, float]
    x_g: torch.Tensor  # (local batch, *shape), detached: the first fake-score step reuses it
    cond: object
    # the summands of ``loss`` as weighted, with their graphs: "objective", and "gan" and
    # "regression" where used (eval/term_gradients.py measures each one's gradient)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Distillation:
    """The algorithm of one run (its ``Plan``): the generator loss, the fake-score (+
    discriminator) loss, and what one iteration carries from the first to the second (the
    generator samples the first fake-score step reuses)."""

    def __init__(self, plan: Plan, schedule: ScheduleConfig, teacher, nets: Networks, real=None, pairs=None,
                 reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.plan, self.schedule, self.teacher, self.nets = plan, schedule, teacher, nets
        self.real, self.pairs, self.reduce_sum = real, pairs, reduce_sum
        self.spec, self.params = plan.objective, plan.params
        self.critic = CriticLoss(plan.critic, teacher, nets) if nets.discriminator is not None else None
        self.last: tuple[torch.Tensor, object] | None = None  # (x_g, cond) of the last generator step

    @property
    def ema_source(self) -> nn.Module:
        """The generator module an EMA follows (the unwrapped one)."""
        return self.nets.plain_generator

    def evaluate_discriminator(self, holdout, rng: torch.Generator, n: int, device) -> dict:
        """The discriminator's held-out accuracy and log-ratio spread ({} without one or a holdout)."""
        if self.critic is None or holdout is None:
            return {}
        return self.critic.evaluate(holdout, rng, n, self.plan.sigma_sampler, self.schedule, device)

    def critics_frozen(self):
        """Context: no parameter gradients into the fake score and discriminator (their inputs
        still pass gradients). Must span the backward pass: activation checkpointing recomputes
        the forward there under the same flags."""
        return frozen(self.nets.plain_fake_score, self.nets.plain_discriminator)

    # ------------------------------------------------------------------ generator

    def generator_loss(self, draws: GlobalDraws, step: int, autocast: AutocastFactory) -> GeneratorLoss:
        """The generator's loss on a fresh batch (call inside ``critics_frozen``)."""
        plan, shape, stats = self.plan, self.teacher.sample_shape, {}
        cond = draws.cond(self.teacher)
        z = draws.randn(*shape)
        sigma = draws.sigma(*plan.sigma_sampler)
        noise = draws.randn(*shape)
        pairs = draws.pairs(self.pairs, plan.regression_batch) if plan.use_regression else None
        with autocast():
            x_g, x_pair = self._generate(z, cond, pairs)
            x_t = x_g + expand(sigma, x_g) * noise
            Dr, feats_r = _call(self.teacher, plan.teacher_call, x_t, sigma, cond)
            Df, feats_f = _call(self.nets.plain_fake_score, plan.fake_call, x_t, sigma, cond)
            logits, grad_log_r = None, None
            if plan.discriminator_at_xt:
                feats = feats_r if plan.features == TEACHER else feats_f
                ratio_gradient = plan.ratio_gradient and step >= plan.ratio_warmup
                keep = plan.gan_at_xt or ratio_gradient
                logits = self.nets.plain_discriminator(feats if keep else [f.detach() for f in feats])
                if ratio_gradient:
                    grad_log_r = _input_gradient(ratio_logit(logits), x_t)
            logits_gan = logits if plan.gan_at_xt else self._gan_logits(x_g, cond, draws)
        weights = self._weights(logits, sigma, step)
        through = self.spec.grad_through
        inputs = ObjectiveInputs(x_g=x_g, sigma=sigma, Dr=Dr if TEACHER in through else Dr.detach(),
                                 Df=Df if FAKE in through else Df.detach(), weights=weights,
                                 grad_log_r=grad_log_r)
        loss = self.spec.fn(inputs, self.params).mean()
        total, terms = loss, {"objective": loss}
        if plan.use_gan:
            gan = generator_gan_loss(logits_gan)
            if plan.gan_at_xt:  # joins the objective's per-sample loss, normalised alike (SiDA)
                gan = gan / per_sample_norm(x_g, Dr, getattr(self.params, "weight_norm", "none"))
            gan = gan.mean()
            terms["gan"] = plan.gan_weight * gan
            total = total + terms["gan"]
            stats["loss_gan"] = gan.item()
        if plan.use_regression:
            reg = regression_loss(x_pair, pairs[1]).mean()
            terms["regression"] = plan.regression_weight * reg
            total = total + terms["regression"]
            stats["loss_reg"] = reg.item()
        stats["loss_g"] = loss.item()
        if weights is not None:
            stats["h_max"] = float(weights.h.max())
        self.last = (x_g.detach(), cond)
        return GeneratorLoss(total, stats, x_g.detach(), cond, terms)

    def _generate(self, z, cond, pairs):
        """``x_g = G(z)`` (B, ...) and, with regression pairs, ``G(z_pair)`` from the same call."""
        if pairs is None:
            return self.nets.generator(z, cond).float(), None
        z_pair, _, cond_pair = pairs
        x_all = self.nets.generator(torch.cat([z, z_pair]), cat_cond(cond, cond_pair)).float()
        return x_all[: len(z)], x_all[len(z):]

    def _gan_logits(self, x_g, cond, draws: GlobalDraws):
        """The discriminator's logits at ``x_g`` noised to its own sigmas (None without a GAN term)."""
        if not self.plan.use_gan:
            return None
        sigma = draws.sigma(*self.plan.critic.sampler)
        x_gan = x_g + expand(sigma, x_g) * draws.randn(*x_g.shape[1:])
        net = self.teacher if self.plan.features == TEACHER else self.nets.plain_fake_score
        _, feats = _call(net, NetworkCall(grad=True, features="only"), x_gan, sigma, cond)
        return self.nets.plain_discriminator(feats)

    def _weights(self, logits, sigma, step: int):
        """f-divergence weights from the logits (reverse KL during the warm-up); None without a ratio."""
        if not self.plan.use_ratio:
            return None
        if step < self.plan.ratio_warmup:
            return f_weights("rkl", torch.zeros_like(sigma))
        return divergence_weights(ratio_logit(logits.detach()), sigma, self.params.f, self.params.f_alpha,
                                  self.params.ratio, self.schedule, self.reduce_sum)

    # ------------------------------------------------------------------ fake score + discriminator

    def fake_score_loss(self, draws: GlobalDraws, autocast: AutocastFactory, reuse: bool = False):
        """Denoising loss of the fake score on generator samples (``reuse``: those of the last
        generator step, else fresh ones), plus the weighted discriminator loss; returns (loss, stats)."""
        shape, stats = self.teacher.sample_shape, {}
        if reuse:
            x_g, cond = self.last
        else:
            cond = draws.cond(self.teacher)
            z = draws.randn(*shape)
            with torch.no_grad(), autocast():
                x_g = self.nets.plain_generator(z, cond).float()
        sigma = draws.sigma(*self.plan.fake_sampler)
        noise = draws.randn(*shape)
        x_dn = x_g + expand(sigma, x_g) * noise
        with autocast():
            if self.critic is None:
                D = self.nets.fake_score(x_dn, sigma, cond).float()
                critic_loss = None
            else:
                D, critic_loss = self.critic(x_g, x_dn, sigma, noise, cond, draws, self.real, stats)
            loss_f = fake_score_loss(D, x_g, sigma, self.teacher.sigma_data).mean()
            total = loss_f if critic_loss is None else loss_f + critic_loss
        stats["loss_f"] = loss_f.item()
        return total, stats


def _input_gradient(log_r: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """``grad_x log r`` (B, ...) at ``x_t`` (B, ...), detached, from the per-sample ratio logit (B,);
    the graph stays for the generator's backward. Samples are independent, so the gradient of the
    sum is each sample's own."""
    (grad,) = torch.autograd.grad(log_r.float().sum(), x_t, retain_graph=True)
    return grad.detach().float()


def _call(net, how: NetworkCall, x_t, sigma, cond):
    """(x0_hat fp32, feature taps or None) of ``net`` at ``x_t``, with or without gradient to ``x_t``."""
    with contextlib.nullcontext() if how.grad else torch.no_grad():
        return call_fp32(net, x_t if how.grad else x_t.detach(), sigma, cond, how.features)

