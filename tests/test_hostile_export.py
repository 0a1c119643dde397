"""Export never deletes what it did not create (issue 22, item 1): a user's DIR.replaced survives
a first export, --overwrite replaces only an earlier onestep export (never the run's teacher or a
trained teacher), symbolic links are refused, and a failed write leaves no partial directory."""

import errno
import os
from pathlib import Path

import pytest
import yaml
from _tiny import save_pixel_pipeline
from test_hostile import _refused, _tree

from onestep.cli import main


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    from diffusers import DDPMScheduler

    root = tmp_path_factory.mktemp("pixelrun")
    teacher = save_pixel_pipeline(root / "teacher", DDPMScheduler())
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": teacher}, "objective": {"name": "dmd"},
                                   "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "progress": False}}))
    assert main(["distill", "--config", str(cfg), "--output", str(root / "run")]) == 0
    return root / "run", Path(teacher)


def test_a_first_export_keeps_a_users_replaced_directory(tmp_path, pixel_run):
    run, _ = pixel_run
    mine = tmp_path / "pipe.replaced"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "pipe")]) == 0
    assert (mine / "notes.txt").read_text() == "mine"
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "pipe"), "--overwrite"]) == 0
    assert (mine / "notes.txt").read_text() == "mine"  # the swapped-out export had a name of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "pipe.replaced"]


def test_overwrite_never_replaces_a_teacher(tmp_path, capsys, pixel_run):
    run, teacher = pixel_run
    _refused(capsys, ["export", "--run", run, "--output", teacher, "--overwrite"], teacher.parent, "would replace")
    trained = tmp_path / "trained"
    assert main(["train-teacher", "--config", "configs/digits-teacher.yaml", "--output", str(trained), "--set",
                 "steps=1", "--set", "progress=false", "--set", "unet.block_out_channels=[8,16]", "--set",
                 "unet.norm_num_groups=4"]) == 0
    capsys.readouterr()
    _refused(capsys, ["export", "--run", run, "--output", trained, "--overwrite"], tmp_path, "EDMPipeline")


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symbolic_link_as_output_is_refused(tmp_path, capsys, pixel_run, dangling):
    run, _ = pixel_run
    target = tmp_path / "earlier"
    if not dangling:
        assert main(["export", "--run", str(run), "--output", str(target)]) == 0
        capsys.readouterr()
    link = tmp_path / "link"
    link.symlink_to(target)
    if not dangling:
        _refused(capsys, ["export", "--run", run, "--output", link, "--overwrite"], tmp_path, "symbolic link")
        return
    assert main(["export", "--run", str(run), "--output", str(link)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symbolic link" in err[0]
    assert link.is_symlink() and not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_a_full_disk_during_export_leaves_nothing_behind(tmp_path, capsys, pixel_run, monkeypatch):
    run, _ = pixel_run
    from safetensors import torch as st

    real = st.save_file

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(st, "save_file", full)
    before = _tree(tmp_path)
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "pipe")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert _tree(tmp_path) == before  # no pipe, no pipe.partial
    monkeypatch.setattr(st, "save_file", real)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    """The second checkpoint's write fails as safetensors reports it: one line naming the file, the
    first checkpoint intact, no temporary file, and the run resumes from it."""
    from conftest import SMALL_GMM
    from safetensors import SafetensorError

    import onestep.core.io as io

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "train": {**SMALL_GMM["train"], "steps": 2, "checkpoint_every": 1}}))
    real, calls = io.save_file, []

    def second_fails(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # (1: the teacher's fitted network, 2: step 1, 3: step 2)
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  "message: \"No space left on device\" })")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(io, "save_file", second_fails)
    run = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--output", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step-00000002.safetensors: No space left on device" in err[0], err
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000001.safetensors"]
    monkeypatch.setattr(io, "save_file", real)
    assert main(["distill", "--config", str(cfg), "--output", str(run), "--resume", "latest"]) == 0


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_a_full_disk_while_writing_samples_leaves_no_partial_file(tmp_path, capsys, monkeypatch, pixel_run, suffix):
    run, _ = pixel_run
    out = tmp_path / f"samples{suffix}"
    out.write_bytes(b"an earlier file of mine")
    import numpy as np
    from PIL import Image

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    monkeypatch.setattr(Image.Image, "save", full)
    assert main(["sample", "--run", str(run), "--output", str(out), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: No space left on device" in err[0], err
    assert out.read_bytes() == b"an earlier file of mine" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_an_unwritable_eval_json_is_refused_before_the_evaluation(capsys, monkeypatch, pixel_run):
    """Tests run as root, where permissions do not bind: an unwritable eval.json is simulated by
    ``os.access``; the refusal must come before any sample is drawn."""
    run, _ = pixel_run
    target = run / "eval.json"
    from onestep.evaluation import score

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == target else real_access(p, mode))
    target.write_text("{}")
    drawn = []
    monkeypatch.setattr(score, "run_samples", lambda *a, **k: drawn.append(a))
    assert main(["eval", "--run", str(run), "--num-samples", "2", "--ref", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the run's eval.json {target} is not writable" in err[0], err
    assert drawn == [] and target.read_text() == "{}"
