"""DMD's regression term: teacher (noise, ODE sample) pairs, and the loss that pulls G(z) onto them."""

import torch
from conftest import small_config

from onestep.build import build_trainer, teacher_cache
from onestep.core.io import atomic_save, load_safetensors
from onestep.core.rundir import CACHE_FILE
from onestep.core.samplers import edm_sample
from onestep.objectives import regression_loss


def test_regression_loss_gradient_is_the_residual():
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    y = torch.randn(3, 2, 4, 4)
    loss = regression_loss(x, y)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, 0.5 * (x - y).pow(2).flatten(1).sum(1))
    loss.sum().backward()
    torch.testing.assert_close(x.grad, x.detach() - y)


def _cache(tmp_path, teacher, size=12):
    cfg = small_config(**{"data.cache_size": size, "data.cache_steps": 6, "data.cache_batch": 5})
    return cfg, teacher_cache(teacher, cfg, tmp_path, "cpu", progress=False)


def test_pairs_are_the_teacher_ode_solutions_of_their_noise(tmp_path, small_teacher):
    cfg, cache = _cache(tmp_path, small_teacher)
    z, x, cond = cache.draw_pairs(7, torch.Generator().manual_seed(0))
    assert z.shape == x.shape == (7, 2) and cond is None
    expected = edm_sample(small_teacher.denoise, z, cfg.schedule, 6)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)
    assert len({tuple(r.tolist()) for r in z}) > 1  # drawn from several pairs, not one
    # the same noise and samples come back from the run directory
    again = teacher_cache(small_teacher, cfg, tmp_path, "cpu", progress=False)
    z2, x2, _ = again.draw_pairs(7, torch.Generator().manual_seed(0))
    assert torch.equal(z, z2) and torch.equal(x, x2)


def test_a_cache_written_without_noise_is_remade(tmp_path, small_teacher):
    cfg, cache = _cache(tmp_path, small_teacher)
    cache.draw(1, torch.Generator().manual_seed(0))
    tensors, _ = load_safetensors(tmp_path / CACHE_FILE)
    atomic_save({"x": tensors["x"]}, tmp_path / CACHE_FILE)  # the format before pairs existed
    _, fresh = _cache(tmp_path, small_teacher)
    z, x, _ = fresh.draw_pairs(4, torch.Generator().manual_seed(1))
    remade, _ = load_safetensors(tmp_path / CACHE_FILE)
    assert torch.equal(remade["x"], tensors["x"]) and torch.equal(remade["noise"], tensors["noise"])
    torch.testing.assert_close(x, edm_sample(small_teacher.denoise, z, cfg.schedule, 6), atol=1e-5, rtol=1e-5)


def _pair_error(trainer, pairs) -> float:
    z, y, _ = pairs.draw_pairs(256, torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float(regression_loss(trainer.method.nets.plain_generator(z), y).mean())


def test_regression_term_pulls_the_generator_onto_the_pairs(tmp_path, small_teacher):
    errors = {}
    for weight in (0.0, 5.0):
        cfg = small_config(**{"objective.name": "dmd", "regression.weight": weight, "regression.batch_size": 32,
                              "data.cache_size": 64, "data.cache_steps": 8, "train.steps": 60})
        tr = build_trainer(cfg, tmp_path / f"w{weight}", teacher=small_teacher)
        pairs = tr.method.pairs
        if weight == 0.0:
            assert pairs is None
            pairs = teacher_cache(small_teacher, cfg, tmp_path / "w0.0", "cpu", progress=False)
        start = _pair_error(tr, pairs)
        stats = [tr.iteration() for _ in range(cfg.train.steps)]
        errors[weight] = (start, _pair_error(tr, pairs))
        assert ("loss_reg" in stats[-1]) == (weight > 0)
    (start0, end0), (start5, end5) = errors[0.0], errors[5.0]
    assert start0 == start5  # same initial generator
    assert end5 < 0.5 * start5 and end5 < 0.5 * end0, errors
