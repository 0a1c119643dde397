"""FSDP2 sharding (``train.sharding: fsdp``) over two CPU processes (gloo): the sharded run ends
with the weights, EMA and optimizer state of the unsharded one-process run on the same global
batch; its checkpoints are full states (they resume sharded, and load in one process)."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_distributed import _config, _run, _seed_teacher

from onestep.core.rundir import checkpoint_path, latest_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TRAINED = ("generator", "fake_score", "discriminator", "ema", "opt_generator", "opt_fake")


def _torchrun(port, *args):
    return _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                 "-m", "onestep", "distill", *args])


def _compare(a, b, atol=2e-5):
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        if k.split(".")[0] in TRAINED and a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], atol=atol, rtol=1e-4, msg=k)
            moved += 1
    return moved


def test_sharded_equals_unsharded_and_resumes(tmp_path, small_teacher):
    cfg = _config(tmp_path, checkpoint_every=3, keep_checkpoints=4, grad_accum=2, sharding="fsdp", shard_teacher=True)
    one, two, split = tmp_path / "one", tmp_path / "two", tmp_path / "split"
    for run in (one, two, split):
        _seed_teacher(cfg, run)
    # one process: sharding is a no-op there
    _run([sys.executable, "-m", "onestep", "distill", "--config", str(cfg), "--output", str(one), "--resume", "latest"])
    proc = _torchrun(29521, "--config", str(cfg), "--output", str(two), "--resume", "latest")
    assert "sharding: generator, fake score, EMA, teacher in 3 FSDP units each over 2 processes" in proc.stdout
    a, b = load_file(str(latest_checkpoint(one))), load_file(str(latest_checkpoint(two)))
    # every network, the EMA and both optimizers' moments: gathered to full tensors, position-keyed
    assert any(k.startswith("opt_fake.state.") and k.endswith("exp_avg") for k in b)
    assert _compare(a, b) > 20
    init = small_teacher.network.state_dict()
    assert not torch.allclose(a["generator.network.out.weight"], init["out.weight"])

    # a sharded run stopped at step 3 and resumed sharded ends where the uninterrupted one did
    _torchrun(29523, "--config", str(cfg), "--output", str(split), "--resume", "latest", "--set", "train.steps=3")
    assert latest_checkpoint(split) == checkpoint_path(split, 3)
    _torchrun(29525, "--config", str(cfg), "--output", str(split), "--resume", "latest")
    assert _compare(b, load_file(str(latest_checkpoint(split))), atol=1e-6) > 20

    # and a sharded checkpoint resumes in one process (the full state loads anywhere)
    single = tmp_path / "single"
    shutil.copytree(split, single)
    checkpoint_path(single, 6).unlink()
    _run([sys.executable, "-m", "onestep", "distill", "--config", str(cfg), "--output", str(single), "--resume",
          "latest"])
    assert _compare(a, load_file(str(latest_checkpoint(single)))) > 20


def test_fp16_with_sharding_and_a_sharded_teacher_without_sharding_are_refused():
    from conftest import small_config

    from onestep.errors import OnestepError

    with pytest.raises(OnestepError, match="bf16"):
        small_config(**{"train.sharding": "fsdp", "train.mixed_precision": "fp16"})
    with pytest.raises(OnestepError, match="train.shard_teacher' needs train.sharding: fsdp"):
        small_config(**{"train.shard_teacher": "true"})


def test_sharding_one_process_warns_and_trains_unsharded(tmp_path, small_teacher):
    from conftest import small_config

    from onestep.build import build_trainer
    from onestep.errors import OnestepWarning

    with pytest.warns(OnestepWarning, match="one process shards nothing"):
        trainer = build_trainer(small_config(**{"train.sharding": "fsdp", "train.steps": 2}), tmp_path / "r",
                                teacher=small_teacher)
    assert not trainer.sharded
    trainer.fit()
    assert trainer.step == 2


def test_sharded_transformer_teacher_equals_unsharded(tmp_path):
    """A DiT teacher: one FSDP unit per transformer block. ``dmd`` calls the fake score without
    gradients in the generator step, then trains it: the root unit must reshard in between (or
    its weights would keep the frozen flag and never train). The reference is the same two processes data-parallel (with Adam's beta1 = 0 the first steps
    move each weight by about +-lr, so one process against two differs by summation order alone)."""
    from _tiny import save_dit_pipeline

    path = save_dit_pipeline(tmp_path / "dit")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "teacher": {"kind": "diffusers", "path": path, "guidance_scale": 1.5}, "objective": {"name": "dmd"},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "progress": False, "sample_every": 0,
                  "ema_halflife_kimg": 0.01, "sharding": "fsdp"}}))
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    _torchrun(29527, "--config", str(cfg), "--output", str(ddp), "--set", "train.sharding=none")
    proc = _torchrun(29529, "--config", str(cfg), "--output", str(fsdp))
    assert "FSDP units each over 2 processes" in proc.stdout
    a, b = load_file(str(latest_checkpoint(ddp))), load_file(str(latest_checkpoint(fsdp)))
    assert _compare(a, b, atol=1e-4) > 50
    init = load_file(str(Path(path) / "transformer" / "diffusion_pytorch_model.safetensors"))
    for key in ("proj_out_2.weight", "pos_embed.proj.weight", "transformer_blocks.0.attn1.to_q.weight"):
        assert not torch.allclose(b[f"fake_score.network.unet.{key}"], init[key]), key  # root-unit weights trained
