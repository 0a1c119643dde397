"""`onestep demo` on a tiny budget: every report file is written, and a re-run resumes."""

import json

import pytest

from onestep.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    args = ["demo", "--output", str(out), "--num-samples", "60", "--set", "train.steps=4",
            "--set", "train.checkpoint_every=2", "--set", "train.batch_size=8", "--set", "data.cache_size=16"]
    assert main(args) == 0
    return out, args


def test_demo_writes_every_artifact(demo_dir):
    out, _ = demo_dir
    for name in ("report.json", "report.md", "samples.png", "teacher.png", "fd_vs_nfe.png", "discriminator.png"):
        assert (out / name).is_file(), name
    assert (out / "pipeline" / "model_index.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert [t["nfe"] for t in report["teacher"]] == [1, 3, 7, 15, 31, 63]
    assert report["student"]["fd"] > 0 and report["distill_seconds"] > 0
    assert report["discriminator_plot"] and "discriminator.png" in (out / "report.md").read_text()
    disc = report["discriminator"]  # the held-out check, overall and per sigma bin
    assert len(disc["disc_acc_bins"]) == len(disc["sigma_bins"]) == len(disc["logr_std"])
    assert all(0 <= a <= 1 for a in disc["disc_acc_bins"]) and 0 <= disc["disc_acc_heldout"] <= 1
    assert "| held-out accuracy |" in (out / "report.md").read_text()
    copies = report["nearest_training_distance"]
    assert copies["student_median"] > 0 and copies["teacher_median"] > 0
    assert 0 <= copies["student_below_teacher_p5"] <= 1
    best = min(t["fd"] for t in report["teacher"])
    assert report["fd_ratio_student_to_best_teacher"] == pytest.approx(report["student"]["fd"] / best)
    from PIL import Image

    w, h = Image.open(out / "samples.png").size
    assert w == h  # 10 classes x 10 samples


def test_demo_rerun_resumes_without_retraining(demo_dir):
    out, args = demo_dir
    before = json.loads((out / "report.json").read_text())
    ckpts = sorted((out / "run" / "checkpoints").iterdir())
    assert main(args) == 0
    after = json.loads((out / "report.json").read_text())
    assert sorted((out / "run" / "checkpoints").iterdir()) == ckpts
    assert after["distill_seconds"] == pytest.approx(before["distill_seconds"])
    assert after["teacher"] == before["teacher"]  # cached sweep
    assert after["student"]["fd"] == pytest.approx(before["student"]["fd"])
