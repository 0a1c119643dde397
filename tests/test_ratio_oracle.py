"""The discriminator's log-ratio against the exact one (a check no official code has).

Teacher p: the analytic mixture; "generator" q: a fixed mixture with the same modes, other
weights and wider components. At every sigma both are mixtures with closed-form densities, so
``log p_sigma(x) / q_sigma(x)`` is exact. Only the discriminator is trained, on exact samples of
both, through the same code as in distillation (``distill.critic.CriticLoss``); its ratio logit
at q's samples (where f-distill reads it) must track the exact log-ratio: Pearson correlation
over sigma in [0.05, 1], before and after the per-sigma-bin normalisation the objectives apply.
An untrained discriminator must fail the same threshold.
"""

import math

import pytest
import torch
from conftest import small_config

from onestep.build import build_trainer
from onestep.distill.draws import GlobalDraws
from onestep.objectives import ratio_logit
from onestep.objectives.ratio import normalise_per_bin
from onestep.teachers.gmm import GaussianMixture

# Measured at this budget (600 discriminator steps, batch 256), training seeds 0, 1, 2: trained
# 0.831 / 0.845 / 0.844 (fake-score features) and 0.816 / 0.814 / 0.810 (teacher features), the
# per-bin normalised values within 0.01 of those; untrained 0.12 / 0.58 / 0.35 (random heads on
# features that already encode position). The threshold sits between the two.
MIN_CORRELATION = 0.75
SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0)
RATIO_CLIP = (0.1, 20.0)  # the objectives' default objective.ratio_clip


def _q(p: GaussianMixture) -> GaussianMixture:
    return GaussianMixture(p.means.tolist(), (p.stds * 1.8).tolist(), p.weights.flip(0).tolist())


def _train(tr, q: GaussianMixture, steps: int, batch: int, seed: int):
    """Discriminator steps only (the fake score's denoising loss is not applied)."""
    method, critic = tr.method, tr.method.critic
    params = [p for p in critic.nets.plain_fake_score.parameters()] if critic.on_fake_score else []
    params += list(critic.nets.plain_discriminator.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(seed)
    draws = GlobalDraws(rng, batch, 0, 1, "cpu", tr.method.schedule)
    for _ in range(steps):
        x_g = q.sample(batch, generator=rng)[0]
        sigma = draws.sigma(*method.plan.fake_sampler)
        noise = draws.randn(*x_g.shape[1:])
        _, loss = critic(x_g, x_g + sigma[:, None] * noise, sigma, noise, None, draws, method.real, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _correlations(tr, p: GaussianMixture, q: GaussianMixture, n: int = 2000) -> tuple[float, float]:
    """Pearson correlation of the estimated and exact log-ratio at q's noisy samples, raw and
    per-bin normalised (one bin per sigma of ``SIGMAS``)."""
    critic = tr.method.critic
    net = critic.nets.plain_fake_score if critic.on_fake_score else tr.teacher
    rng = torch.Generator().manual_seed(123)
    est, exact, normed = [], [], []
    for s in SIGMAS:
        x = q.sample(n, generator=rng)[0]
        x_t = x + s * torch.randn(x.shape, generator=rng)
        sigma = torch.full((n,), s)
        logit = ratio_logit(critic.nets.plain_discriminator(net(x_t, sigma, None, return_features=True)[1]))
        truth = (p.log_prob(x_t, sigma) - q.log_prob(x_t, sigma)).float()
        r = normalise_per_bin(logit.exp(), sigma, 1, tr.method.schedule, lambda t: t)
        est.append(logit)
        exact.append(truth)
        normed.append(r.log())

    def pearson(a, b):  # within the range the weights can express (objective.ratio_clip)
        lo, hi = math.log(RATIO_CLIP[0]), math.log(RATIO_CLIP[1])
        a, b = torch.cat(a).double().clamp(lo, hi), torch.cat(b).double().clamp(lo, hi)
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    return pearson(est, exact), pearson(normed, exact)


@pytest.mark.parametrize("features", ["fake_score", "teacher"])
def test_discriminator_log_ratio_tracks_the_exact_one(tmp_path, small_teacher, features):
    cfg = small_config(**{"objective.name": "f_distill", "objective.f": "js", "discriminator.features": features})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    p = small_teacher.gmm
    q = _q(p)
    untrained = _correlations(tr, p, q)
    _train(tr, q, steps=600, batch=256, seed=0)
    raw, normed = _correlations(tr, p, q)
    assert raw > MIN_CORRELATION and normed > MIN_CORRELATION, (raw, normed)
    assert not untrained[0] > MIN_CORRELATION, untrained  # it had to learn


def test_held_out_accuracy_is_measured_in_each_sigma_bin():
    """``CriticLoss.evaluate``'s per-bin accuracy, on a discriminator whose accuracy is known to
    fall with sigma: real images +1, generator images -1, logit = the pixel mean of the noisy
    input (64 pixels: noise std sigma / 8), so the bins below sigma 1 are separated almost
    perfectly and the bin above sigma 5 averages Phi(8 / sigma) over log sigma in [5, 80] (about 0.67)."""
    from types import SimpleNamespace

    from onestep.core.rundir import SPREAD_EDGES
    from onestep.core.schedule import ScheduleConfig
    from onestep.distill.critic import CriticLoss, binned_sigmas
    from onestep.distill.plan import CriticPlan

    schedule = ScheduleConfig()
    sigma = binned_sigmas(500, schedule, torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.bucketize(sigma, torch.tensor(SPREAD_EDGES)), minlength=5)
    assert counts.tolist() == [100] * 5
    assert schedule.sigma_min <= float(sigma.min()) and float(sigma.max()) <= schedule.sigma_max

    class Features(torch.nn.Module):  # the "fake score": its features are its input
        def forward(self, x, sigma, cond=None, return_features=False):
            return x, [x]

    shape = (1, 8, 8)
    teacher = SimpleNamespace(sample_shape=shape, sample_cond=lambda n, rng: None)
    nets = SimpleNamespace(plain_generator=lambda z, cond: -torch.ones_like(z), plain_fake_score=Features(),
                           plain_discriminator=lambda feats: feats[0].flatten(1).mean(1, keepdim=True))
    holdout = SimpleNamespace(draw=lambda n, rng: (torch.ones(n, *shape), None))
    plan = CriticPlan(("lognormal", None), True, True, True, "none", 1.0, 0.0, None)
    out = CriticLoss(plan, teacher, nets).evaluate(holdout, torch.Generator().manual_seed(1), 1000,
                                                   ("lognormal", None), schedule, "cpu")
    acc = out["disc_acc_bins"]
    assert len(acc) == len(SPREAD_EDGES) + 1
    assert min(acc[:3]) > 0.99 and 0.5 < acc[4] < 0.75 and acc[3] > acc[4] + 0.15, acc


def test_the_ratio_gradient_reaches_the_objective_per_sample(tmp_path, small_teacher, monkeypatch):
    """``objective.log_ratio_gradient: discriminator``: the generator step hands the objective the
    input-gradient of each sample's own ratio logit at its ``x_t`` (recomputed here one sample at a
    time), from the first step after the warm-up on."""
    import dataclasses

    from onestep.distill import method as method_mod

    cfg = small_config(**{"objective.name": "uni_instruct", "objective.f": "js", "objective.ratio_warmup": 1,
                          "objective.log_ratio_gradient": "discriminator"})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    seen, calls = [], []
    spec = tr.method.spec
    tr.method.spec = dataclasses.replace(spec, fn=lambda inp, p: seen.append(inp) or spec.fn(inp, p))
    original = method_mod._input_gradient
    monkeypatch.setattr(method_mod, "_input_gradient",
                        lambda log_r, x_t: calls.append((x_t, original(log_r, x_t))) or calls[-1][1])
    tr.iteration()  # the warm-up step: reverse-KL weights, no ratio gradient
    assert seen[-1].grad_log_r is None and not calls
    tr.generator_step()  # (not a whole iteration: the critics' step would move what is recomputed below)
    x_t, grad = calls[-1]
    assert seen[-1].grad_log_r is grad and grad.shape == x_t.shape and grad.abs().max() > 0
    critic = tr.method.critic
    for i in range(4):
        x = x_t[i:i + 1].detach().requires_grad_(True)
        _, feats = critic.nets.plain_fake_score(x, seen[-1].sigma[i:i + 1], None, return_features=True)
        (alone,) = torch.autograd.grad(ratio_logit(critic.nets.plain_discriminator(feats)).sum(), x)
        torch.testing.assert_close(grad[i:i + 1], alone, rtol=1e-4, atol=1e-6)


def test_the_ratio_gradient_is_read_only_with_a_ratio(tmp_path, small_teacher):
    """Reverse KL reads no ratio: the plan computes no ratio gradient; ``scores`` turns it off."""
    from onestep.distill.plan import Plan

    for f, form, expected in (("rkl", "discriminator", False), ("js", "scores", False), ("js", "discriminator", True)):
        cfg = small_config(**{"objective.name": "uni_instruct", "objective.f": f, "objective.log_ratio_gradient": form})
        assert Plan.from_config(cfg).ratio_gradient is expected, (f, form)
    assert Plan.from_config(small_config(**{"objective.name": "uni_instruct", "objective.f": "js"})).ratio_gradient
