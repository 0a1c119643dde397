"""A teacher's (noise, sample) pairs made once (``onestep pairs``) and read by runs (``data.pairs``)."""

import copy

import pytest
import torch
import yaml
from conftest import SMALL_GMM, small_config

from onestep.build import build_trainer, make_pairs, teacher_cache
from onestep.cli import main
from onestep.core.io import atomic_save, load_safetensors
from onestep.core.rundir import CACHE_FILE
from onestep.core.samplers import edm_sample
from onestep.errors import OnestepError

PAIRS = {"data.cache_size": 24, "data.cache_steps": 6, "data.cache_batch": 10}


def _reader(path, **more):
    return small_config(**{**PAIRS, "data.pairs": str(path), **more})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_pairs_file_holds_the_teachers_ode_solutions_of_its_noise(tmp_path, small_teacher, dtype):
    path = tmp_path / "pairs.safetensors"
    assert make_pairs(small_teacher, small_config(**PAIRS), path, dtype, progress=False) == 24
    stored, meta = load_safetensors(path)
    assert stored["x"].dtype == stored["noise"].dtype == dtype and stored["x"].shape == (24, 2)
    cache = teacher_cache(small_teacher, _reader(path), tmp_path / "run", "cpu", progress=False)
    z, x, cond = cache.draw_pairs(9, torch.Generator().manual_seed(0))
    assert z.dtype == x.dtype == torch.float32 and cond is None
    assert len({tuple(r.tolist()) for r in z}) > 1
    # the pairs are the teacher's map of the noise as stored (fp16: noise rounded before solving)
    expected = edm_sample(small_teacher.denoise, z, small_config().schedule, 6)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(x, expected, atol=tol, rtol=tol)
    assert not (tmp_path / "run" / CACHE_FILE).exists()  # read, not copied or remade in the run
    # the same as the run's own cache of that seed and size (fp32)
    if dtype == torch.float32:
        own = teacher_cache(small_teacher, small_config(**PAIRS), tmp_path / "own", "cpu", progress=False)
        own.draw(1, torch.Generator())
        torch.testing.assert_close(own.noise, cache.noise)


def test_a_pairs_file_of_another_teacher_or_schedule_is_refused(tmp_path, small_teacher):
    path = tmp_path / "pairs.safetensors"
    make_pairs(small_teacher, small_config(**PAIRS), path, progress=False)
    other = copy.deepcopy(small_teacher)
    with torch.no_grad():
        next(other.network.parameters()).add_(1e-3)
    with pytest.raises(OnestepError, match="another teacher"):
        teacher_cache(other, _reader(path), None, "cpu", progress=False).draw(1, torch.Generator())
    guided = copy.deepcopy(small_teacher)
    guided.guidance_scale = 2.0  # the same weights, another map
    with pytest.raises(OnestepError, match="another guidance scale or prompts"):
        teacher_cache(guided, _reader(path), None, "cpu", progress=False).draw(1, torch.Generator())
    with pytest.raises(OnestepError, match="another noise schedule"):
        teacher_cache(small_teacher, _reader(path, **{"schedule.sigma_max": 40.0}), None, "cpu",
                      progress=False).draw(1, torch.Generator())
    with pytest.raises(OnestepError, match="no such file"):
        teacher_cache(small_teacher, _reader(tmp_path / "absent.safetensors"), None, "cpu",
                      progress=False).draw(1, torch.Generator())
    atomic_save({"weight": torch.zeros(3)}, tmp_path / "weights.safetensors")
    with pytest.raises(OnestepError, match="not a pairs file"):
        teacher_cache(small_teacher, _reader(tmp_path / "weights.safetensors"), None, "cpu",
                      progress=False).draw(1, torch.Generator())
    # the original still serves its own teacher
    teacher_cache(small_teacher, _reader(path), None, "cpu", progress=False).draw(1, torch.Generator())


def test_a_run_regresses_onto_the_pairs_file(tmp_path, small_teacher):
    path = tmp_path / "pairs.safetensors"
    make_pairs(small_teacher, small_config(**PAIRS), path, progress=False)
    cfg = _reader(path, **{"objective.name": "dmd", "regression.weight": 1.0, "regression.batch_size": 8})
    trainer = build_trainer(cfg, tmp_path / "run", teacher=small_teacher)
    stored, _ = load_safetensors(path)
    z, y, _ = trainer.method.pairs.draw_pairs(5, torch.Generator().manual_seed(2))
    rows = [(stored["noise"] == zi).all(1).nonzero().flatten() for zi in z]
    assert all(len(r) == 1 for r in rows) and all(torch.equal(stored["x"][r[0]], yi) for r, yi in zip(rows, y))
    assert "loss_reg" in trainer.iteration()
    assert not (tmp_path / "run" / CACHE_FILE).exists()


def _config_file(tmp_path, **data):
    cfg = copy.deepcopy(SMALL_GMM)
    cfg["data"] = {**cfg.get("data", {}), "cache_size": 16, "cache_steps": 4, "cache_batch": 8, **data}
    cfg["objective"] = {"name": "dmd"}
    cfg["regression"] = {"weight": 1.0, "batch_size": 8}
    cfg["train"] = {**cfg["train"], "steps": 2, "checkpoint_every": 2, "log_every": 1}
    path = tmp_path / f"cfg{len(data)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cli_pairs_writes_once_and_distill_reads_it(tmp_path, capsys):
    out = tmp_path / "pairs.safetensors"
    assert main(["pairs", "--config", _config_file(tmp_path), "--output", str(out), "--dtype", "fp16"]) == 0
    assert "16 teacher pairs" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["pairs", "--config", _config_file(tmp_path), "--output", str(out)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["pairs", "--config", _config_file(tmp_path), "--output", str(tmp_path / "no" / "p.st")]) == 2
    # a relative data.pairs resolves against the config file's directory
    cfg = _config_file(tmp_path, pairs="pairs.safetensors")
    assert main(["distill", "--config", cfg, "--output", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run" / CACHE_FILE).exists()
    assert main(["distill", "--config", _config_file(tmp_path, pairs="gone.safetensors"),
                 "--output", str(tmp_path / "run2")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "run2").exists()  # refused before writing
