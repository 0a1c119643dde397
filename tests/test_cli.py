"""CLI: every user error is one line on stderr with exit code 2; sample/objectives work."""

import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import SMALL_GMM

from onestep.cli import main


def _cfg(tmp_path, **sections):
    data = {**SMALL_GMM, **sections}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("onestep: error: "), err
    return lines[0]


def test_missing_config_file(tmp_path, capsys):
    msg = _error(capsys, ["distill", "--config", str(tmp_path / "no.yaml"), "--output", str(tmp_path / "r")])
    assert "config file not found" in msg


def test_bad_key(tmp_path, capsys):
    msg = _error(capsys, ["distill", "--config", _cfg(tmp_path), "--output", str(tmp_path / "r"),
                          "--set", "train.bogus=1"])
    assert "unknown config key 'train.bogus'" in msg


def test_unknown_objective(tmp_path, capsys):
    msg = _error(capsys, ["distill", "--config", _cfg(tmp_path, objective={"name": "dmd9"}),
                          "--output", str(tmp_path / "r")])
    assert "unknown objective 'dmd9'" in msg and "uni_instruct" in msg


@pytest.mark.parametrize("override,key", [
    ("train.steps=-3", "train.steps"),
    ("train.lr_generator=abc", "train.lr_generator"),
    ("objective.f=kl", "objective.f"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
])
def test_bad_value(tmp_path, capsys, override, key):
    args = ["distill", "--config", _cfg(tmp_path), "--output", str(tmp_path / "r"), "--set", override]
    if override.startswith("objective.f"):
        args += ["--set", "objective.name=f_distill"]
    assert key in _error(capsys, args)


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert "--output" in _error(capsys, ["distill", "--config", _cfg(tmp_path)])
    assert "invalid choice" in _error(capsys, ["distil"])


def test_sample_errors(tmp_path, capsys):
    assert "run directory not found" in _error(capsys, ["sample", "--run", str(tmp_path / "x"), "--output", "a.npy"])
    (tmp_path / "empty").mkdir()
    assert "no checkpoint" in _error(capsys, ["sample", "--run", str(tmp_path / "empty"), "--output", "a.npy"])


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    assert main(["distill", "--config", _cfg(tmp_path), "--output", str(tmp_path / "r"), "--dry-run",
                 "--set", "objective.name=sid"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["objective"]["name"] == "sid" and out["schedule"]["rho"] == 7.0
    assert not (tmp_path / "r").exists()


def test_objectives_table(capsys):
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    for name in ("diff_instruct", "dmd", "sid", "sida", "sim", "f_distill", "uni_instruct", "jeffreys", "arXiv"):
        assert name in out


def test_distill_then_sample_is_deterministic_and_batch_independent(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = _cfg(tmp_path, train={**SMALL_GMM["train"], "steps": 4, "checkpoint_every": 4})
    assert main(["distill", "--config", cfg, "--output", str(run)]) == 0
    a, b, c = (tmp_path / n for n in ("a.npy", "b.npy", "c.npy"))
    assert main(["sample", "--run", str(run), "--num-samples", "10", "--seed", "3", "--output", str(a)]) == 0
    assert main(["sample", "--run", str(run), "--num-samples", "10", "--seed", "3", "--output", str(b),
                 "--batch-size", "3"]) == 0
    assert main(["sample", "--run", str(run), "--num-samples", "10", "--seed", "4", "--output", str(c)]) == 0
    xa, xb, xc = np.load(a), np.load(b), np.load(c)
    assert xa.shape == (10, 2) and np.isfinite(xa).all()
    # same per-index noise; batched matmuls may differ in the last bits only
    np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-6)
    assert not np.allclose(xa, xc, atol=1e-3)
    assert "no EMA" in _error(capsys, ["sample", "--run", str(run), "--ema", "--output", str(a)])


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onestep", "distill", "--config", str(tmp_path / "no.yaml"),
                           "--output", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    debug = subprocess.run([sys.executable, "-m", "onestep", "--debug", "distill", "--config",
                            str(tmp_path / "no.yaml"), "--output", str(tmp_path / "r")], capture_output=True, text=True)
    assert "Traceback" in debug.stderr
