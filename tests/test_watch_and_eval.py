"""Training a user can watch (TensorBoard scalars and sample grids, read back from the event
file) and evaluation as a command (onestep eval; its FID equals torch-fidelity's own CLI)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny import save_pixel_pipeline
from diffusers import EDMEulerScheduler

from onestep.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("watch")
    teacher = save_pixel_pipeline(tmp / "teacher", EDMEulerScheduler(), num_class_embeds=10)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": teacher}, "objective": {"name": "dmd"},
                                   "train": {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 4,
                                             "sample_every": 2, "report_to": "tensorboard", "progress": False}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp / "run")]) == 0
    return tmp / "run"


def test_tensorboard_gets_the_logged_rows_and_the_grids(watched_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(watched_run.rglob("events.out.tfevents.*"))
    assert events, list(watched_run.rglob("*"))
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    loss = acc.Scalars("loss_g")
    rows = [json.loads(x) for x in (watched_run / "stats.jsonl").read_text().splitlines()]
    assert [e.step for e in loss] == [r["step"] for r in rows] == [2, 4]
    assert loss[-1].value == pytest.approx(rows[-1]["loss_g"], rel=1e-6)
    images = acc.Images("samples")
    assert [i.step for i in images] == [2, 4] and images[0].width > 0


def test_validation_grids_use_fixed_noise(watched_run):
    from PIL import Image

    grids = sorted((watched_run / "samples").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-00000002.png", "step-00000004.png"]
    a, b = (np.asarray(Image.open(g)) for g in grids)
    assert a.shape == b.shape and not np.array_equal(a, b)  # same layout, the generator moved


def test_missing_tracker_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    from conftest import SMALL_GMM

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "train": {**SMALL_GMM["train"], "report_to": "wandb"}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "r")]) == 2
    assert "onestep[wandb]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _standin_inception(path: Path) -> Path:
    """InceptionV3 with random weights (the real ones cannot be downloaded here), saved as plain
    tensors: both torch-fidelity and onestep read the same file."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    original_load = fe.FeatureExtractorInceptionV3.load_state_dict
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    real_url = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict = original_load
        fe.load_state_dict_from_url = real_url
    torch.save(model.state_dict(), path)
    return path


def test_eval_matches_torch_fidelity_cli_with_the_same_weights(tmp_path, watched_run):
    from PIL import Image

    from onestep.data.datasets import load_digits
    from onestep.evaluation.score import run_samples

    weights = _standin_inception(tmp_path / "inception.pth")
    reference = load_digits(8)[0][:32].repeat(1, 3, 1, 1)  # the run's 8x8 RGB; InceptionV3 on a CPU: ~3 images/s
    np.save(tmp_path / "ref.npy", reference.numpy())
    out = tmp_path / "eval.json"
    assert main(["eval", "--run", str(watched_run), "--ref", str(tmp_path / "ref.npy"), "--features", "inception",
                 "--inception-weights", str(weights), "--metrics", "fid", "--num-samples", "24", "--batch-size", "12",
                 "--cache-root", str(tmp_path / "cache"), "--output", str(out)]) == 0
    ours = json.loads(out.read_text())["frechet_inception_distance"]
    assert json.loads((watched_run / "eval.json").read_text())["frechet_inception_distance"] == ours
    # the same images as files, scored by torch-fidelity's own command line
    for name, images in (("a", run_samples(watched_run, False, 24, 0, 12)), ("b", reference)):
        folder = tmp_path / name
        folder.mkdir()
        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for i, img in enumerate(u8):
            Image.fromarray(img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()).convert("RGB") \
                .save(folder / f"{i:05d}.png")
    proc = subprocess.run([sys.executable, "-m", "torch_fidelity.fidelity", "--cpu", "--json", "--fid",
                           "--input1", str(tmp_path / "a"), "--input2", str(tmp_path / "b"),
                           "--feature-extractor-weights-path", str(weights), "--batch-size", "12"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout[proc.stdout.index("{"):])["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)


def test_eval_by_cached_reference_name(tmp_path, watched_run, capsys):
    cache = tmp_path / "cache"
    args = ["eval", "--run", str(watched_run), "--metrics", "fid", "--num-samples", "40", "--cache-root", str(cache),
            "--features", "digits"]
    assert main([*args, "--ref", "digits"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--ref", "digits"]) == 0  # second time: the cached statistics
    assert first == capsys.readouterr().out
    assert main([*args, "--ref", "no-such-reference"]) == 2
    assert "no-such-reference" in capsys.readouterr().err


def test_fid_script_calc_by_reference_name(tmp_path):
    cache = tmp_path / "cache"
    run = [sys.executable, "eval/fid.py"]
    ref = subprocess.run([*run, "ref", "--name", "d", "--images", "digits", "--cache-root", str(cache)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ref.returncode == 0, ref.stderr[-1000:]
    calc = subprocess.run([*run, "calc", "--ref", "d", "--images", "digits", "--metrics", "fid", "--cache-root",
                           str(cache)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert calc.returncode == 0, calc.stderr[-1000:]
    assert json.loads(calc.stdout)["frechet_inception_distance"] < 1e-6  # the reference against itself
