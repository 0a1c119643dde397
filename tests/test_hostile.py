"""Hostile input, as a new user would try it: every case exits 2 with one line naming the problem,
and nothing on disk changes (every file under the test's directory keeps its bytes and mtime)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from _tiny import save_pixel_pipeline
from conftest import SMALL_GMM

from onestep.cli import main
from onestep.errors import OnestepWarning

FAST_TRAIN = {**SMALL_GMM["train"], "steps": 2, "checkpoint_every": 1, "log_every": 1}


def _tree(root: Path) -> dict:
    """path -> (sha256, mtime) of every file, and directories as such."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = ("dir",) if p.is_dir() else (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def _refused(capsys, argv, root: Path, *fragments: str) -> str:
    """Run the CLI; assert exit 2, one stderr line naming the problem, and an unchanged tree."""
    before = _tree(root)
    code = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, err
    errors = [ln for ln in err if ln.startswith("onestep: error: ")]
    assert len(errors) == 1 and len(err) == 1, err
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    assert _tree(root) == before, "the refused command changed files on disk"
    return errors[0]


def _config(root: Path, **sections) -> Path:
    data = {**SMALL_GMM, "train": FAST_TRAIN, **sections}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------- bad values

BAD_VALUES = [
    ("gan.weight=.nan", "gan.weight"),
    ("gan.weight=-1", "gan.weight"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.ema_halflife_kimg=-0.5", "train.ema_halflife_kimg"),
    ("network.hidden=0", "network.hidden"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.lr_generator=.inf", "train.lr_generator"),
    ("train.betas=[0.9]", "train.betas"),
    ("train.betas=[1.0,0.9]", "train.betas"),
    ("data.cache_steps=0", "data.cache_steps"),
    ("data.cache_size=0", "data.cache_size"),
    ("train.lr_head=-1", "discriminator.lr"),
    ("discriminator.lr=-1", "discriminator.lr"),
    ("objective.sigma_sampler=foo", "objective.sigma_sampler"),
    ("objective.sigma_range=[0.8,0.1]", "objective.sigma_range"),
    ("objective.sigma_range=[0,0.5,1]", "objective.sigma_range"),
    ("objective.sigma_range=[0,1500]", "objective.sigma_range"),
    ("discriminator.sigma_range=[0.1,0.5]", "discriminator.sigma_range"),
    ("schedule.sigma_min=100", "schedule.sigma_min"),
    ("teacher.stds=[0.1,-1,0.1,0.1,0.1]", "teacher.stds"),
    ("objective.alpha=1", "objective.alpha"),  # dmd takes no alpha
    ("regression.batch_size=0", "regression.batch_size"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_key(tmp_path, capsys, override, key):
    cfg = _config(tmp_path)
    _refused(capsys, ["distill", "--config", cfg, "--output", tmp_path / "run", "--set", override], tmp_path, key)


@pytest.mark.parametrize("override,key", [
    ("objective.ratio_bins=-1", "objective.ratio_bins"),
    ("objective.logit_clip=-1", "objective.logit_clip"),
    ("objective.ratio_clip=[5,1]", "objective.ratio_clip"),
    ("objective.f_alpha=0.3", "objective.f_alpha"),
])
def test_bad_ratio_values_are_refused(tmp_path, capsys, override, key):
    cfg = _config(tmp_path, objective={"name": "f_distill", "f": "js"})
    _refused(capsys, ["distill", "--config", cfg, "--output", tmp_path / "run", "--set", override], tmp_path, key)


def test_config_files_that_are_not_configs(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("teacher: {kind: gmm}  # caf\xe9\n".encode("latin-1"))
    _refused(capsys, ["distill", "--config", bad, "--output", tmp_path / "r"], tmp_path, "not UTF-8")
    bad.write_text("- a\n- b\n")
    _refused(capsys, ["distill", "--config", bad, "--output", tmp_path / "r"], tmp_path, "mapping")
    bad.write_text("teacher: !!python/object/apply:os.system ['echo pwned']\n")
    _refused(capsys, ["distill", "--config", bad, "--output", tmp_path / "r"], tmp_path, "not valid YAML")


# ---------------------------------------------------------------------------- teacher directories


@pytest.fixture(scope="module")
def pixel_teacher(tmp_path_factory):
    from diffusers import DDPMScheduler

    return Path(save_pixel_pipeline(tmp_path_factory.mktemp("t") / "teacher", DDPMScheduler()))


def _broken_teacher(pixel_teacher, root: Path, how: str) -> Path:
    t = root / "teacher"
    shutil.copytree(pixel_teacher, t)
    index = json.loads((t / "model_index.json").read_text())
    weights = t / "unet" / "diffusion_pytorch_model.safetensors"
    if how == "unknown library":
        index["unet"] = ["pipeline", "EvilUNet"]
        (t / "pipeline.py").write_text("open('PWNED', 'w').write('x')\n")
        (t / "model_index.json").write_text(json.dumps(index))
    elif how == "unknown class":
        index["unet"] = ["diffusers", "NoSuchUNet"]
        (t / "model_index.json").write_text(json.dumps(index))
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "pickled weights only":
        weights.rename(weights.with_suffix(".bin"))
    elif how == "missing subfolder":
        shutil.rmtree(t / "unet")
    elif how == "missing config":
        (t / "unet" / "config.json").unlink()
    elif how == "corrupt model_index":
        (t / "model_index.json").write_text("{not json")
    elif how == "no model_index":
        (t / "model_index.json").unlink()
    return t


TEACHER_CASES = [("unknown library", "trust_remote_code"), ("unknown class", "NoSuchUNet"),
                 ("truncated weights", "unet"), ("pickled weights only", "pickled"),
                 ("missing subfolder", "'unet' is missing"), ("missing config", "no config"),
                 ("corrupt model_index", "not valid JSON"), ("no model_index", "model_index.json")]


@pytest.mark.parametrize("how,fragment", TEACHER_CASES, ids=[h for h, _ in TEACHER_CASES])
def test_broken_teacher_directories(tmp_path, capsys, monkeypatch, pixel_teacher, how, fragment):
    teacher = _broken_teacher(pixel_teacher, tmp_path, how)
    cfg = _config(tmp_path, teacher={"kind": "diffusers", "path": str(teacher)})
    monkeypatch.chdir(teacher)  # as `python -m` from the teacher's folder: its .py files must not run
    _refused(capsys, ["distill", "--config", cfg, "--output", tmp_path / "run"], tmp_path, fragment)
    assert not (teacher / "PWNED").exists()


def test_teacher_path_that_is_a_file_or_missing(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    cfg = _config(tmp_path, teacher={"kind": "diffusers", "path": str(f)})
    _refused(capsys, ["distill", "--config", cfg, "--output", tmp_path / "run"], tmp_path, "is a file")
    cfg = _config(tmp_path, teacher={"kind": "diffusers", "path": "./no/such/dir"})
    _refused(capsys, ["distill", "--config", cfg, "--output", tmp_path / "run"], tmp_path, "does not exist")


# ---------------------------------------------------------------------------- outputs


def test_outputs_that_cannot_be_written(tmp_path, capsys):
    cfg = _config(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _refused(capsys, ["distill", "--config", cfg, "--output", afile], tmp_path, "is a file")
    _refused(capsys, ["distill", "--config", cfg, "--output", afile / "run"], tmp_path, "under the file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    _refused(capsys, ["distill", "--config", cfg, "--output", mine], tmp_path, "not a run's")


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmmrun")
    data = {**SMALL_GMM, "train": {**FAST_TRAIN, "ema_halflife_kimg": 0.1}}
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["distill", "--config", str(cfg), "--output", str(root / "run")]) == 0
    return root / "run"


def _copy_run(gmm_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(gmm_run, run)
    return run


def test_export_never_replaces_what_it_must_not(tmp_path, capsys, gmm_run, pixel_teacher):
    run = _copy_run(gmm_run, tmp_path)
    _refused(capsys, ["export", "--run", run, "--output", run], tmp_path, "would replace")
    _refused(capsys, ["export", "--run", run, "--output", tmp_path], tmp_path, "working directory") \
        if Path.cwd() == tmp_path else None
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _refused(capsys, ["export", "--run", run, "--output", afile], tmp_path, "is a file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    _refused(capsys, ["export", "--run", run, "--output", mine], tmp_path, "not empty")
    _refused(capsys, ["export", "--run", run, "--output", mine, "--overwrite"], tmp_path, "not an earlier output")
    (tmp_path / "out.partial").write_text("a file, not ours")
    _refused(capsys, ["export", "--run", run, "--output", tmp_path / "out"], tmp_path, "interrupted write")


def test_export_to_the_working_directory_is_refused(tmp_path, capsys, monkeypatch, gmm_run):
    run = _copy_run(gmm_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["export", "--run", run, "--output", "."], tmp_path, "working directory")


def test_train_teacher_never_replaces_a_foreign_directory(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    _refused(capsys, ["train-teacher", "--config", "configs/digits-teacher.yaml", "--output", mine], tmp_path,
             "not empty")


# ---------------------------------------------------------------------------- sample


@pytest.mark.parametrize("extra,fragment", [
    (["--batch-size", "-1"], "--batch-size"), (["--num-samples", "0"], "--num-samples"),
    (["--nrow", "0"], "--nrow"), (["--class-label", "3"], "not class-conditional"),
])
def test_sample_arguments(tmp_path, capsys, gmm_run, extra, fragment):
    run = _copy_run(gmm_run, tmp_path)
    _refused(capsys, ["sample", "--run", run, "--output", tmp_path / "x.npy", *extra], tmp_path, fragment)


def test_sample_outputs_and_broken_runs(tmp_path, capsys, gmm_run):
    run = _copy_run(gmm_run, tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _refused(capsys, ["sample", "--run", run, "--output", afile / "x.npy"], tmp_path, "under the file")
    (tmp_path / "d.npy").mkdir()
    _refused(capsys, ["sample", "--run", run, "--output", tmp_path / "d.npy"], tmp_path, "is a directory")
    _refused(capsys, ["sample", "--run", run, "--output", tmp_path / "x.txt"], tmp_path, ".npy or .png")
    (run / "network.json").write_text("{garbage")
    _refused(capsys, ["sample", "--run", run, "--output", tmp_path / "x.npy"], tmp_path, "network.json")


def test_class_label_out_of_range(tmp_path, capsys, pixel_teacher):
    from diffusers import EDMEulerScheduler

    teacher = save_pixel_pipeline(tmp_path / "t", EDMEulerScheduler(), num_class_embeds=10)
    cfg = _config(tmp_path, teacher={"kind": "diffusers", "path": teacher},
                  train={**FAST_TRAIN, "batch_size": 4, "steps": 1})
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    _refused(capsys, ["sample", "--run", tmp_path / "run", "--output", tmp_path / "x.npy", "--class-label", "12"],
             tmp_path, "out of range")


# ---------------------------------------------------------------------------- resume and checkpoints


def test_resume_problems(tmp_path, capsys, gmm_run):
    cfg = _config(tmp_path)
    _refused(capsys, ["distill", "--config", cfg, "--output", tmp_path / "typo", "--resume", "latest"], tmp_path,
             "does not exist")
    run = _copy_run(gmm_run, tmp_path)
    _refused(capsys, ["distill", "--config", cfg, "--output", run], tmp_path, "--resume latest")
    _refused(capsys, ["distill", "--config", cfg, "--output", run, "--resume", "latest", "--set",
                      "network.hidden=32"], tmp_path, "config differs in network.hidden")
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.write_bytes(b"torn")
    _refused(capsys, ["distill", "--config", cfg, "--output", run, "--resume", "latest"], tmp_path,
             "no readable checkpoint")


def test_resume_skips_a_damaged_newest_checkpoint_and_a_torn_log_line(tmp_path, capsys, gmm_run):
    """--resume latest takes the newest sound checkpoint, says which it skipped, and survives a
    stats.jsonl whose last line was cut mid-write."""
    cfg = _config(tmp_path, train={**FAST_TRAIN, "steps": 3, "ema_halflife_kimg": 0.1})
    run = _copy_run(gmm_run, tmp_path)
    newest = sorted((run / "checkpoints").iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    with open(run / "stats.jsonl", "a") as fh:
        fh.write('{"step": 9, "loss')
    with pytest.warns(OnestepWarning, match=f"skipping {newest.name}"):
        assert main(["distill", "--config", str(cfg), "--output", str(run), "--resume", "latest"]) == 0
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3


def test_checkpoint_without_onestep_metadata(tmp_path, capsys, gmm_run):
    from safetensors.torch import load_file, save_file

    run = _copy_run(gmm_run, tmp_path)
    for ckpt in (run / "checkpoints").iterdir():
        save_file(load_file(str(ckpt)), str(ckpt), metadata={"format": "something else"})
    cfg = _config(tmp_path)
    _refused(capsys, ["distill", "--config", cfg, "--output", run, "--resume", "latest"], tmp_path,
             "no readable checkpoint")


def test_a_second_process_on_one_run_directory_is_refused(tmp_path, capsys, gmm_run):
    from onestep.core.rundir import RunLock

    run = _copy_run(gmm_run, tmp_path)
    cfg = _config(tmp_path, train={**FAST_TRAIN, "steps": 4, "ema_halflife_kimg": 0.1})
    lock = RunLock(run).acquire()  # stands for a running `onestep distill`
    try:
        msg = _refused(capsys, ["distill", "--config", cfg, "--output", run, "--resume", "latest"], tmp_path,
                       "in use by another onestep process")
        assert str(os.getpid()) in msg
    finally:
        lock.release()


def test_bare_onestep_is_an_error(capsys, tmp_path):
    _refused(capsys, [], tmp_path, "no command given")


def test_fid_script_refuses_pickled_arrays(tmp_path):
    import subprocess
    import sys

    import numpy as np

    bad = tmp_path / "obj.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    proc = subprocess.run([sys.executable, "eval/fid.py", "calc", "--ref", "digits", "--images", str(bad)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert "pickle" in proc.stderr


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, gmm_run):
    """The disk fills while a checkpoint is written: one line, the earlier checkpoints intact, no
    temporary file left; the run then resumes from the last intact checkpoint."""
    import errno

    import onestep.core.io as io

    run = _copy_run(gmm_run, tmp_path)
    cfg = _config(tmp_path, train={**FAST_TRAIN, "steps": 4, "keep_checkpoints": 5, "ema_halflife_kimg": 0.1})
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    real_save = io.save_file

    def full(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(io, "save_file", full)
    assert main(["distill", "--config", str(cfg), "--output", str(run), "--resume", "latest"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert not [p for p in run.rglob("*.tmp")]


def test_stale_temporary_files_are_removed_when_a_run_resumes(tmp_path, gmm_run):
    from onestep.core.rundir import RunLock

    run = _copy_run(gmm_run, tmp_path)
    stale = run / "checkpoints" / ".step-00000003.safetensors.99999.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = run / "checkpoints" / "notes.tmp"  # not one of ours: left alone
    mine.write_text("x")
    RunLock(run).acquire().release()
    assert not stale.exists() and mine.exists()
