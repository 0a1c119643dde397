"""The plan of a distillation: every decision about the algorithm, made once from the config.

``Plan.from_config`` is the only reader of the ``objective``, ``gan``, ``discriminator`` and
``regression`` sections for what the algorithm does; the iteration (``Distillation``), the
critic (``CriticLoss``), the loop (``train.Trainer``), ``build`` and the memory estimate
(``train.memory``) read the plan. A new objective registers its gradient paths and samplers
(``objectives.registry``) and every reader follows, the memory estimate included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..objectives.registry import FAKE, TEACHER, ObjectiveSpec

SigmaSpec = tuple[str, "tuple[float, float] | None"]  # (sampler name, range or None)


@dataclass(frozen=True)
class NetworkCall:
    """How the generator step calls a frozen network at ``x_t``."""

    grad: bool  # the generator's gradient flows through the network's input
    features: bool | str  # also return its feature taps (the discriminator reads them); "only": x0_hat not needed


@dataclass(frozen=True)
class CriticPlan:
    """How the discriminator trains next to the fake score (``distill.critic``)."""

    sampler: SigmaSpec  # its noise levels
    shared_noise: bool  # real and fake at the same sigma and noise (SiDA) or independent ones (DMD2)
    on_fake_score: bool  # it reads the fake score's features (else the frozen teacher's)
    one_pass: bool  # the fake-score loss's noisy inputs are its fakes: one fake-score pass for both
    weighting: str  # per-sample loss weight: "none" or "edm" (lambda(sigma))
    loss_weight: float  # next to the fake-score loss
    r1_weight: float
    lr: float | None  # its heads' learning rate (None: the fake score's)


@dataclass(frozen=True)
class Plan:
    """What one iteration computes (docs/design.md section 4), decided once per run."""

    objective: ObjectiveSpec
    params: Any  # the objective's parameters dataclass
    sigma_sampler: SigmaSpec  # the generator loss's sigmas
    fake_sampler: SigmaSpec  # the fake-score loss's sigmas
    stratified_sigma: bool
    use_ratio: bool  # the objective's weights read the discriminator's density ratio
    ratio_gradient: bool  # the objective also reads grad_x log r (the ratio logit's input-gradient) at x_t
    ratio_warmup: int  # generator steps with reverse-KL weights before the ratio is read
    gan_weight: float  # 0: no GAN term
    gan_at_xt: bool  # the GAN term reads the discriminator at the objective's x_t (SiDA)
    regression_weight: float  # 0: no regression term
    regression_batch: int  # regression pairs per generator step (global)
    features: str  # the network whose features the discriminator reads: TEACHER or FAKE
    teacher_call: NetworkCall
    fake_call: NetworkCall
    critic: CriticPlan | None  # None: no discriminator

    @property
    def name(self) -> str:
        return self.objective.name

    @property
    def use_gan(self) -> bool:
        return self.gan_weight > 0

    @property
    def use_regression(self) -> bool:
        return self.regression_weight > 0

    @property
    def needs_discriminator(self) -> bool:
        return self.critic is not None

    @property
    def discriminator_at_xt(self) -> bool:
        """The generator step reads the discriminator at its own x_t (for the ratio or the GAN term)."""
        return self.teacher_call.features or self.fake_call.features

    @classmethod
    def from_config(cls, config) -> Plan:
        """The plan of a validated ``Config`` (its recipe applied: no null discriminator keys)."""
        spec, params = config.objective.resolve()
        o, d = config.objective, config.discriminator
        sigma_sampler = (o.sigma_sampler or spec.sigma_sampler, _range(o.sigma_range))
        fake_sampler = sigma_sampler if o.fake_sigma_sampler == "generator" else ("lognormal", None)
        use_ratio = spec.needs_ratio(params)
        use_gan = config.gan.weight > 0
        # The discriminator reads the features at the objective's x_t for the ratio, and for the
        # GAN term when that sits there (gan.sigma: objective); the GAN term needs gradients
        # through the network it reads.
        gan_at_xt = use_gan and config.gan.sigma == "objective"
        tap = d.features if (gan_at_xt or use_ratio) else None
        through = spec.grad_through
        critic = None
        if use_ratio or use_gan or d.monitor:
            sampler = (d.sigma_sampler, _range(d.sigma_range))
            on_fake = d.features == FAKE
            shared = d.noise == "shared"
            critic = CriticPlan(sampler, shared, on_fake, on_fake and shared and sampler == fake_sampler,
                                d.weighting, d.loss_weight, d.r1_weight, d.lr)
        return cls(
            objective=spec, params=params, sigma_sampler=sigma_sampler, fake_sampler=fake_sampler,
            stratified_sigma=o.stratified_sigma, use_ratio=use_ratio,
            ratio_gradient=use_ratio and getattr(params, "needs_ratio_gradient", False),
            ratio_warmup=o.ratio_warmup if o.ratio_warmup is not None else config.train.steps // 10,
            gan_weight=config.gan.weight, gan_at_xt=gan_at_xt, regression_weight=config.regression.weight,
            regression_batch=config.regression.batch_size, features=d.features,
            teacher_call=NetworkCall(TEACHER in through or (gan_at_xt and tap == TEACHER), tap == TEACHER),
            fake_call=NetworkCall(FAKE in through or (gan_at_xt and tap == FAKE), tap == FAKE),
            critic=critic,
        )

    def graph_batches(self, local: int, global_batch: int, guidance_passes: int = 1) -> list[int]:
        """Samples (per process) in each network graph held at the peak of an iteration: the
        larger (in samples) of the generator step's graphs and the fake-score step's.

        ``local``: this process's share of ``global_batch``; ``guidance_passes``: teacher passes per
        sample (2 under classifier-free guidance).
        """
        pairs = self.regression_batch // max(1, global_batch // local) if self.use_regression else 0
        generator_step = [local + pairs]  # the generator, with its regression pairs in the same call
        generator_step += [local * guidance_passes] if self.teacher_call.grad else []
        generator_step += [local] if self.fake_call.grad else []
        if self.use_gan and not self.gan_at_xt:  # its own call with gradients, at the discriminator's sigmas
            generator_step.append(local * (guidance_passes if self.features == TEACHER else 1))
        fake_step = [local]
        if self.critic is not None and self.critic.on_fake_score:
            # one pass: the denoising input (+ separate fakes) + the reals
            fake_step = [local * (2 if self.critic.one_pass else 3)]
        return max(generator_step, fake_step, key=sum)


def _range(value):
    return tuple(value) if value else None
