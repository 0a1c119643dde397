"""Trainer behaviour: which parameters each step touches, non-finite handling, logs, EMA."""

import dataclasses
import json

import pytest
import torch
from conftest import small_config

from onestep.build import build_trainer
from onestep.errors import OnestepError


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


@pytest.mark.parametrize("overrides", [
    {"objective.name": "sid"},
    {"objective.name": "dmd", "gan.weight": 0.01},
    {"objective.name": "uni_instruct", "objective.f": "js"},
    {"objective.name": "f_distill", "objective.f": "fkl", "gan.weight": 0.01, "discriminator.features": "fake_score"},
    {"objective.name": "sid", "gan.weight": 0.01, "discriminator.sigma_sampler": "lognormal"},
    {"objective.name": "dmd", "regression.weight": 1.0, "data.cache_size": 16, "data.cache_steps": 4},
])
def test_generator_step_updates_only_the_generator(tmp_path, small_teacher, overrides):
    tr = build_trainer(small_config(**overrides), tmp_path, teacher=small_teacher)
    fake, head = tr.method.nets.plain_fake_score, tr.method.nets.plain_discriminator
    before_g, before_f = _snapshot(tr.generator), _snapshot(fake)
    before_t = _snapshot(small_teacher.network)
    before_h = _snapshot(head) if head is not None else None
    tr.generator_step()
    assert _changed(before_g, tr.generator), "generator did not move"
    assert not _changed(before_f, fake) and not _changed(before_t, small_teacher.network)
    assert all(p.grad is None for p in fake.parameters())
    assert all(p.requires_grad for p in fake.parameters())  # unfrozen again afterwards
    if head is not None:
        assert not _changed(before_h, head)
    # ...and the fake step moves the fake score (and head), not the generator or the teacher
    before_g = _snapshot(tr.generator)
    tr.fake_step(reuse=True)
    assert _changed(before_f, fake) and not _changed(before_g, tr.generator)
    assert not _changed(before_t, small_teacher.network)
    if head is not None:
        assert _changed(before_h, head)


def test_fit_leaves_teacher_unchanged_and_logs(tmp_path, small_teacher):
    before = _snapshot(small_teacher.network)
    cfg = small_config(**{"objective.name": "f_distill", "objective.f": "js", "train.ema_halflife_kimg": 0.5})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    tr.fit()
    assert not _changed(before, small_teacher.network)
    rows = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for r in rows:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss_g", "loss_f", "loss_disc"))
        assert r["nonfinite_skipped"] == 0
    # EMA trails the generator: different, but closer to it than the initial weights are
    gen = tr.method.nets.plain_generator
    init = small_teacher.network.state_dict()
    ema_sd, gen_sd = tr.ema.module.network.state_dict(), gen.network.state_dict()
    key = "out.weight"
    assert not torch.equal(ema_sd[key], gen_sd[key])
    assert (ema_sd[key] - gen_sd[key]).norm() < (init[key] - gen_sd[key]).norm()


def test_nonfinite_steps_are_skipped_then_abort_with_checkpoint_intact(tmp_path, small_teacher, monkeypatch):
    cfg = small_config(**{"train.steps": 30, "train.max_nonfinite": 3})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    real_fn = tr.method.spec.fn
    calls = {"n": 0}

    def poisoned(inp, params):  # finite for 12 generator steps, NaN afterwards
        calls["n"] += 1
        loss = real_fn(inp, params)
        return loss * float("nan") if calls["n"] > 12 else loss

    tr.method.spec = dataclasses.replace(tr.method.spec, fn=poisoned)
    with pytest.raises(OnestepError, match=r"3 non-finite steps in a row .*step-00000010"):
        tr.fit()
    assert tr.nonfinite_total == 3
    # the last good checkpoint is intact, finite and loadable
    from onestep.runs import load_generator

    gen, _, step = load_generator(tmp_path)
    assert step == 10 and all(torch.isfinite(p).all() for p in gen.parameters())


def test_single_nonfinite_step_is_skipped_and_counted(tmp_path, small_teacher):
    cfg = small_config(**{"train.steps": 6, "train.log_every": 6})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    real_fn = tr.method.spec.fn
    calls = {"n": 0}

    def once(inp, params):
        calls["n"] += 1
        loss = real_fn(inp, params)
        return loss * float("inf") if calls["n"] == 3 else loss

    tr.method.spec = dataclasses.replace(tr.method.spec, fn=once)
    for _ in range(2):
        tr.iteration()
    before = _snapshot(tr.generator)
    tr.generator_step()  # the poisoned one: skipped, generator unchanged
    assert not _changed(before, tr.generator) and tr.nonfinite_total == 1
    tr.generator_step()
    assert _changed(before, tr.generator) and tr.nonfinite_streak["generator"] == 0


@pytest.mark.parametrize("features", ["teacher", "fake_score"])
def test_gan_at_the_discriminators_sigmas_reads_only_those(tmp_path, small_teacher, features):
    """gan.sigma: discriminator: the GAN term and the discriminator's loss draw their noise levels
    from discriminator.sigma_sampler only; the objective keeps its own."""
    from onestep.core.schedule import karras_sigmas

    cfg = small_config(**{"objective.name": "sid", "gan.weight": 0.1, "gan.sigma": "discriminator",
                          "discriminator.features": features, "discriminator.noise": "independent",
                          "discriminator.sigma_sampler": "karras", "discriminator.sigma_range": [0.9, 1.0]})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    calls = []
    draw = tr.draws.sigma

    def recording(name, sigma_range=None):
        out = draw(name, sigma_range)
        calls.append((name, sigma_range, out))
        return out

    tr.draws.sigma = recording
    before = _snapshot(tr.generator)
    tr.iteration()
    grid = karras_sigmas(11, cfg.schedule)  # grid[9] is u = 0.9 of the Karras schedule
    ours = [s for name, r, s in calls if r == (0.9, 1.0)]
    k = cfg.train.fake_steps_per_gen  # the GAN term, then real and fake sigmas of k discriminator steps
    assert len(ours) == 1 + 2 * k
    assert float(torch.cat(ours).min()) >= float(grid[9]) * 0.999
    assert [name for name, r, _ in calls if r != (0.9, 1.0)] == ["karras"] + ["lognormal"] * k  # objective, fake loss
    # the GAN term moves the generator: the same step without it differs
    assert _changed(before, tr.generator)
    plain = build_trainer(small_config(**{"objective.name": "sid", "gan.weight": 0.0}), tmp_path / "plain",
                          teacher=small_teacher)
    plain.generator_step()
    a = tr.method.nets.plain_generator.state_dict()
    b = plain.method.nets.plain_generator.state_dict()
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_mean_head_is_refused_on_frozen_teacher_features():
    with pytest.raises(OnestepError, match="discriminator.head"):
        small_config(**{"objective.name": "dmd", "gan.weight": 0.01, "discriminator.features": "teacher",
                        "discriminator.head": "mean"})


def test_cosine_decay_lowers_the_generator_rate_to_a_tenth_and_leaves_the_fake_scores(tmp_path, small_teacher):
    """train.lr_decay=cosine (the fashion recipe's): lr(step) = lr (0.1 + 0.45 (1 + cos(pi step / steps)))."""
    import math

    cfg = small_config(**{"objective.name": "sid", "train.lr_decay": "cosine", "train.steps": 20,
                          "train.lr_generator": 2e-4, "train.lr_fake": 3e-4})
    tr = build_trainer(cfg, tmp_path, teacher=small_teacher)
    tr.fit()
    rows = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr_generator"] for r in rows}
    assert len(logged) >= 3
    rate = [2e-4 * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 20))) for s in range(20)]
    every = cfg.train.log_every
    for step, lr in logged.items():  # a log line holds the mean over its window of steps
        assert lr == pytest.approx(sum(rate[step - every:step]) / every, rel=1e-6)
    assert logged[20] < 0.2 * 2e-4 < 0.9 * 2e-4 < logged[5]  # (the last window's mean: 0.16 of the rate)
    assert all(g["lr"] == pytest.approx(rate[19]) for g in tr.opt_generator.param_groups)
    assert all(g["lr"] == pytest.approx(3e-4) for g in tr.opt_fake.param_groups)  # the fake score's stays
