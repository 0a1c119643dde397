"""A run killed with SIGKILL mid-training resumes and ends bit-identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import yaml
from conftest import SMALL_GMM
from safetensors.torch import load_file

from onestep.core.rundir import latest_checkpoint, list_checkpoints

STEPS = 60


def _config(tmp_path):
    data = {**SMALL_GMM, "objective": {"name": "f_distill", "f": "js"}}
    data["train"] = {**SMALL_GMM["train"], "steps": STEPS, "checkpoint_every": 10, "keep_checkpoints": 3,
                     "ema_halflife_kimg": 0.5}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _distill(config, out, *extra, wait=True):
    cmd = [sys.executable, "-m", "onestep", "distill", "--config", str(config), "--output", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    config = _config(tmp_path)
    full = _distill(config, tmp_path / "full")
    assert full.returncode == 0, full.stderr

    run = tmp_path / "killed"
    proc = _distill(config, run, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s >= 20 for s, _ in list_checkpoints(run)):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill, at whatever point it has reached
    proc.wait()
    killed_at = latest_checkpoint(run)
    assert killed_at is not None and "step-00000060" not in killed_at.name

    again = _distill(config, run)  # without --resume: refuses to overwrite
    assert again.returncode == 2 and "--resume latest" in again.stderr

    resumed = _distill(config, run, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(latest_checkpoint(tmp_path / "full")))
    b = load_file(str(latest_checkpoint(run)))
    assert a.keys() == b.keys()
    weights = [k for k in a if k.split(".")[0] in ("generator", "ema", "fake_score", "discriminator")]
    assert len(weights) > 10
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after resume"
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated log rows


def test_a_resume_takes_the_new_learning_rates(tmp_path, small_teacher):
    """The way out of a divergence abort is a resume with lower learning rates: they must apply
    to the restored optimizers (not the checkpoint's)."""
    from conftest import small_config

    from onestep.build import build_trainer

    run = tmp_path / "run"
    first = build_trainer(small_config(**{"train.steps": 2, "objective.name": "f_distill", "objective.f": "js",
                                          "gan.weight": 0.01}), run, teacher=small_teacher)
    first.fit()
    lowered = {"train.steps": 3, "objective.name": "f_distill", "objective.f": "js", "gan.weight": 0.01,
               "train.lr_fake": 1e-6, "discriminator.lr": 2e-6}
    second = build_trainer(small_config(**lowered), run, teacher=small_teacher)
    second.fit(resume=latest_checkpoint(run))
    assert [g["lr"] for g in second.opt_fake.param_groups] == [1e-6, 2e-6]
    assert second.opt_fake.state  # the moments were restored, not reset
