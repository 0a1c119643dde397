"""Samplers: per-index noise, the EDM Heun sampler on an exact denoiser, sigma samplers."""

import math

import torch

from onestep.core.samplers import edm_sample, heun_steps_for_nfe, per_index_noise
from onestep.core.schedule import (
    ScheduleConfig,
    karras_sigmas,
    log_sigma_bins,
    sample_sigma,
    stratified_uniform,
)
from onestep.evaluation.gmm_metrics import evaluate_samples
from onestep.teachers.gmm import GaussianMixture


def test_per_index_noise_is_batch_independent_and_distinct():
    whole = per_index_noise(7, 0, 10, (3, 2))
    parts = torch.cat([per_index_noise(7, 0, 4, (3, 2)), per_index_noise(7, 4, 6, (3, 2))])
    assert torch.equal(whole, parts)
    assert not torch.allclose(per_index_noise(8, 0, 10, (3, 2)), whole)
    assert len({tuple(r.flatten().tolist()) for r in whole}) == 10


def test_heun_with_the_exact_denoiser_samples_the_mixture():
    gmm = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.1, 0.2], [0.7, 0.3])
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    x = edm_sample(lambda x, s, c: gmm.denoise(x, s).float(), z, ScheduleConfig(), 32)
    r = evaluate_samples(x, gmm)
    assert r["mmd"] < 5 * abs(r["mmd_floor"]) + 2e-3
    torch.testing.assert_close(torch.tensor(r["mass"]), gmm.weights.float() * (1 - math.exp(-4.5)), atol=0.03, rtol=0)
    one_step = edm_sample(lambda x, s, c: gmm.denoise(x, s).float(), z, ScheduleConfig(), 1, heun=False)
    assert evaluate_samples(one_step, gmm)["mmd"] > 10 * r["mmd"]  # one Euler step is the mean
    assert heun_steps_for_nfe(63) == 32 and heun_steps_for_nfe(1) == 1


def test_sigma_samplers_follow_their_definitions():
    cfg = ScheduleConfig()
    rng = torch.Generator().manual_seed(0)
    logn = sample_sigma("lognormal", 50_000, cfg, rng).log()
    assert abs(float(logn.mean()) - cfg.p_mean) < 0.02 and abs(float(logn.std()) - cfg.p_std) < 0.02
    k = sample_sigma("karras", 50_000, cfg, rng, (0.0, 0.8))
    hi = (cfg.sigma_min ** (1 / 7) + 0.8 * (cfg.sigma_max ** (1 / 7) - cfg.sigma_min ** (1 / 7))) ** 7
    assert float(k.min()) >= cfg.sigma_min * 0.999 and float(k.max()) <= hi * 1.001
    grid = karras_sigmas(1000, cfg)
    g = sample_sigma("karras_grid", 5000, cfg, rng, (20, 980)).double()
    assert float(g.min()) >= float(grid[20]) * 0.9999 and float(g.max()) <= float(grid[980]) * 1.0001
    assert abs(float(grid[0]) - cfg.sigma_min) < 1e-9 and abs(float(grid[-1]) - cfg.sigma_max) < 1e-6
    bins = log_sigma_bins(torch.tensor([cfg.sigma_min, 1.0, cfg.sigma_max]), cfg, 8)
    assert bins.tolist()[0] == 0 and bins.tolist()[-1] == 7


def test_stratified_sigmas_fill_every_quantile_slot_once():
    cfg = ScheduleConfig()
    u = stratified_uniform(64, torch.Generator().manual_seed(0))
    slots = (u * 64).floor().long()
    assert sorted(slots.tolist()) == list(range(64))
    assert not torch.equal(slots, torch.arange(64))  # in random order (ranks take slices)
    # each sampler maps slot k into its k-th quantile interval: the k-th smallest sigma lies
    # between the sampler's quantiles at k/n and (k+1)/n (exact quantile functions)
    n, lo, hi = 100, 0.0, 0.8
    grid = karras_sigmas(1000, cfg)
    k = torch.arange(n + 1, dtype=torch.float64) / n
    quantiles = {
        "karras": (lo + (hi - lo) * k, lambda p: (cfg.sigma_min ** (1 / 7) + p * (cfg.sigma_max ** (1 / 7) - cfg.sigma_min ** (1 / 7))) ** 7),
        "lognormal": (k.clamp(1e-7, 1 - 1e-7), lambda p: (cfg.p_mean + cfg.p_std * torch.special.ndtri(p)).exp()),
        "karras_grid": (k, lambda p: grid[(20 + (p * 961).floor().long()).clamp(20, 980)]),
    }
    for name, (p, quantile) in quantiles.items():
        args = (20, 980) if name == "karras_grid" else (lo, hi) if name == "karras" else None
        s = sample_sigma(name, n, cfg, torch.Generator().manual_seed(1), args, stratified=True).double().sort().values
        q = quantile(p)
        assert bool((s >= q[:-1] * (1 - 1e-5)).all() and (s <= q[1:] * (1 + 1e-5)).all()), name
    # and the mean over a batch varies far less than with independent draws
    means = [sample_sigma("karras", 16, cfg, torch.Generator().manual_seed(i), (lo, hi), stratified=s).log().mean()
             for s in (True, False) for i in range(200)]
    spread_strat, spread_iid = torch.stack(means[:200]).std(), torch.stack(means[200:]).std()
    assert spread_strat < 0.5 * spread_iid
