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
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..core.modules import frozen
from ..core.tensors import cat_cond, expand
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

AutocastFactory = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class NetworkCall:
    """How the generator step calls a frozen network at ``x_t``, decided once per run."""

    grad: bool  # the generator's gradient flows through the network's input
    features: bool  # also return its feature taps (the discriminator reads them)


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


class Distillation:
    """The algorithm of one run: its objective, sigma samplers, gradient paths and added terms."""

    def __init__(self, config: Config, teacher, nets: Networks, real=None, pairs=None,
                 reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cfg, self.teacher, self.nets, self.real, self.pairs = config, teacher, nets, real, pairs
        self.reduce_sum = reduce_sum
        self.spec, self.params = config.objective.resolve()
        o = config.objective
        self.sigma_sampler = (o.sigma_sampler or self.spec.sigma_sampler, _range(o.sigma_range))
        self.fake_sampler = self.sigma_sampler if o.fake_sigma_sampler == "generator" else ("lognormal", None)
        self.use_ratio = self.spec.needs_ratio(self.params)
        self.use_gan = config.gan.weight > 0
        self.use_regression = config.regression.weight > 0
        self.ratio_warmup = o.ratio_warmup if o.ratio_warmup is not None else config.train.steps // 10
        self.critic = CriticLoss(config, teacher, nets, self.fake_sampler) if nets.discriminator is not None else None
        self.features = config.discriminator.features
        # The discriminator reads the features at the objective's x_t for the ratio, and for the
        # GAN term when that sits there (gan.sigma: objective); the GAN term needs gradients
        # through the network it reads.
        self.gan_at_xt = self.use_gan and config.gan.sigma == "objective"
        tap = self.features if (self.gan_at_xt or self.use_ratio) else None
        through = self.spec.grad_through
        self.teacher_call = NetworkCall(TEACHER in through or (self.gan_at_xt and tap == TEACHER), tap == TEACHER)
        self.fake_call = NetworkCall(FAKE in through or (self.gan_at_xt and tap == FAKE), tap == FAKE)
        self.discriminator_at_xt = tap is not None

    @staticmethod
    def needs_discriminator(config: Config) -> bool:
        spec, params = config.objective.resolve()
        return spec.needs_ratio(params) or config.gan.weight > 0 or config.discriminator.monitor

    def critics_frozen(self):
        """Context: no parameter gradients into the fake score and discriminator (their inputs
        still pass gradients). Must span the backward pass: activation checkpointing recomputes
        the forward there under the same flags."""
        return frozen(self.nets.plain_fake_score, self.nets.plain_discriminator)

    # ------------------------------------------------------------------ generator

    def generator_loss(self, draws: GlobalDraws, step: int, autocast: AutocastFactory) -> GeneratorLoss:
        """The generator's loss on a fresh batch (call inside ``critics_frozen``)."""
        shape, stats = self.teacher.sample_shape, {}
        cond = draws.cond(self.teacher)
        z = draws.randn(*shape)
        sigma = draws.sigma(*self.sigma_sampler)
        noise = draws.randn(*shape)
        pairs = draws.pairs(self.pairs, self.cfg.regression.batch_size) if self.use_regression else None
        with autocast():
            x_g, x_pair = self._generate(z, cond, pairs)
            x_t = x_g + expand(sigma, x_g) * noise
            Dr, feats_r = _call(self.teacher, self.teacher_call, x_t, sigma, cond)
            Df, feats_f = _call(self.nets.plain_fake_score, self.fake_call, x_t, sigma, cond)
            logits = None
            if self.discriminator_at_xt:
                feats = feats_r if self.features == TEACHER else feats_f
                logits = self.nets.plain_discriminator(feats if self.gan_at_xt else [f.detach() for f in feats])
            logits_gan = logits if self.gan_at_xt else self._gan_logits(x_g, cond, draws)
        weights = self._weights(logits, sigma, step)
        through = self.spec.grad_through
        inputs = ObjectiveInputs(x_g=x_g, sigma=sigma, Dr=Dr if TEACHER in through else Dr.detach(),
                                 Df=Df if FAKE in through else Df.detach(), weights=weights)
        loss = self.spec.fn(inputs, self.params).mean()
        total = loss
        if self.use_gan:
            gan = generator_gan_loss(logits_gan)
            if self.gan_at_xt:  # joins the objective's per-sample loss, normalised alike (SiDA)
                gan = gan / per_sample_norm(x_g, Dr, getattr(self.params, "weight_norm", "none"))
            gan = gan.mean()
            total = total + self.cfg.gan.weight * gan
            stats["loss_gan"] = gan.item()
        if self.use_regression:
            reg = regression_loss(x_pair, pairs[1]).mean()
            total = total + self.cfg.regression.weight * reg
            stats["loss_reg"] = reg.item()
        stats["loss_g"] = loss.item()
        if weights is not None:
            stats["h_max"] = float(weights.h.max())
        return GeneratorLoss(total, stats, x_g.detach(), cond)

    def _generate(self, z, cond, pairs):
        """``x_g = G(z)`` (B, ...) and, with regression pairs, ``G(z_pair)`` from the same call."""
        if pairs is None:
            return self.nets.generator(z, cond).float(), None
        z_pair, _, cond_pair = pairs
        x_all = self.nets.generator(torch.cat([z, z_pair]), cat_cond(cond, cond_pair)).float()
        return x_all[: len(z)], x_all[len(z):]

    def _gan_logits(self, x_g, cond, draws: GlobalDraws):
        """The discriminator's logits at ``x_g`` noised to its own sigmas (None without a GAN term)."""
        if not self.use_gan:
            return None
        sigma = draws.sigma(*self.critic.sampler)
        x_gan = x_g + expand(sigma, x_g) * draws.randn(*x_g.shape[1:])
        net = self.teacher if self.features == TEACHER else self.nets.plain_fake_score
        _, feats = _call(net, NetworkCall(grad=True, features=True), x_gan, sigma, cond)
        return self.nets.plain_discriminator(feats)

    def _weights(self, logits, sigma, step: int):
        """f-divergence weights from the logits (reverse KL during the warm-up); None without a ratio."""
        if not self.use_ratio:
            return None
        if step < self.ratio_warmup:
            return f_weights("rkl", torch.zeros_like(sigma))
        return divergence_weights(ratio_logit(logits.detach()), sigma, self.params.f, self.params.f_alpha,
                                  self.params.ratio, self.cfg.schedule, self.reduce_sum)

    # ------------------------------------------------------------------ fake score + discriminator

    def fake_score_loss(self, draws: GlobalDraws, autocast: AutocastFactory, reuse=None):
        """Denoising loss of the fake score on generator samples (``reuse``: (x_g, cond) of the
        last generator step), plus the weighted discriminator loss; returns (loss, stats)."""
        shape, stats = self.teacher.sample_shape, {}
        if reuse is not None:
            x_g, cond = reuse
        else:
            cond = draws.cond(self.teacher)
            z = draws.randn(*shape)
            with torch.no_grad(), autocast():
                x_g = self.nets.plain_generator(z, cond).float()
        sigma = draws.sigma(*self.fake_sampler)
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


def _range(value):
    return tuple(value) if value else None


def _call(net, how: NetworkCall, x_t, sigma, cond):
    """(x0_hat fp32, feature taps or None) of ``net`` at ``x_t``, with or without gradient to ``x_t``."""
    with contextlib.nullcontext() if how.grad else torch.no_grad():
        x_in = x_t if how.grad else x_t.detach()
        if how.features:
            d, f = net(x_in, sigma, cond, return_features=True)
            return d.float(), f
        return net(x_in, sigma, cond).float(), None

