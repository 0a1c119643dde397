"""Two CPU processes over gloo (torchrun) end with the weights of one process on the same
global batch: per-rank slices of one global noise draw, DDP gradient averaging and the
all-reduced ratio-weight normalisation make the process count invisible."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import SMALL_GMM
from safetensors.torch import load_file

from onestep.core.rundir import TEACHER_NETWORK_FILE, latest_checkpoint


def _config(tmp_path, **train):
    data = {**SMALL_GMM, "objective": {"name": "f_distill", "f": "js", "ratio_warmup": 2},
            "gan": {"weight": 0.01}}
    data["train"] = {**SMALL_GMM["train"], "steps": 6, "batch_size": 32, "checkpoint_every": 6,
                     "ema_halflife_kimg": 0.5, **train}
    path = tmp_path / f"cfg{len(train)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(cmd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _seed_teacher(cfg_path, run):
    """Both runs read the same fitted teacher network (as a resumed run would)."""
    from onestep import load_config
    from onestep.build import build_teacher

    run.mkdir(parents=True, exist_ok=True)
    build_teacher(load_config(cfg_path), run, progress=False)
    assert (run / TEACHER_NETWORK_FILE).is_file()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_equal_one(tmp_path, small_teacher, grad_accum):
    cfg = _config(tmp_path, grad_accum=grad_accum)
    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):
        _seed_teacher(cfg, run)
    _run([sys.executable, "-m", "onestep", "distill", "--config", str(cfg), "--output", str(one), "--resume", "latest"])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
          "-m", "onestep", "distill", "--config", str(cfg), "--output", str(two), "--resume", "latest"])
    a, b = load_file(str(latest_checkpoint(one))), load_file(str(latest_checkpoint(two)))
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        if k.split(".")[0] in ("generator", "fake_score", "discriminator", "ema"):
            torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
            moved += 1
    assert moved > 10
    # and training did move the weights: the comparison is not between two initialisations
    init = small_teacher.network.state_dict()
    assert not torch.allclose(a["generator.network.out.weight"], init["out.weight"])
    # only the main process wrote logs
    rows = (two / "stats.jsonl").read_text().splitlines()
    assert len(rows) == len({r for r in rows})


def test_two_processes_equal_one_with_lora_adapters(tmp_path):
    """DDP over the generator and fake score when they are adapter views on the teacher's shared
    base (their parameters: the adapters alone): two processes end where one does."""
    from _tiny import save_pixel_pipeline
    from diffusers import EDMEulerScheduler

    teacher = save_pixel_pipeline(tmp_path / "teacher", EDMEulerScheduler(), num_class_embeds=4)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        # (the GAN term: a gradient from the first step; the divergences' is zero while fake score = teacher,
        # and Adam's first steps take the sign of what is then float noise)
        "teacher": {"kind": "diffusers", "path": teacher}, "objective": {"name": "f_distill", "f": "js", "ratio_warmup": 1},
        "gan": {"weight": 0.01}, "data": {"cache_size": 16, "cache_steps": 4},
        "generator": {"lora": {"rank": 4}}, "fake_score": {"lora": {"rank": 4}},
        "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 3, "progress": False, "ema_halflife_kimg": 0.01,
                  "sample_every": 0}}))
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "onestep", "distill", "--config", str(cfg), "--output", str(one)])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29518",
          "-m", "onestep", "distill", "--config", str(cfg), "--output", str(two)])
    a, b = load_file(str(latest_checkpoint(one))), load_file(str(latest_checkpoint(two)))
    assert a.keys() == b.keys()
    nets = [k for k in a if k.split(".")[0] in ("generator", "fake_score", "ema")]
    assert nets and all("/lora_" in k for k in nets)
    nets += [k for k in a if k.startswith("discriminator.")]
    bad = [k for k in nets if not torch.allclose(b[k], a[k], atol=2e-5, rtol=1e-4)]
    import collections
    kinds = collections.Counter((k.split(".")[0], "lora_A" in k) for k in bad)
    worst = max((float((b[k] - a[k]).abs().max()), k) for k in bad) if bad else None
    assert not bad, (kinds, worst)
    assert any(a[k].abs().sum() > 0 for k in nets if "lora_B" in k)  # the adapters moved off B = 0
