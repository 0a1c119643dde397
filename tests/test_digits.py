"""The embedded default: bundled data, the committed teacher and feature network, train-teacher."""

import json

import pytest
import torch

from onestep import config as config_mod
from onestep.cli import main
from onestep.data.datasets import load_digits
from onestep.evaluation.classifier_training import accuracy
from onestep.evaluation.digits_features import DEFAULT_WEIGHTS, load_classifier
from onestep.resources import DIGITS_TEACHER


def test_digits_data():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10))
    x16, _ = load_digits(size=16)
    assert x16.shape == (1797, 1, 16, 16)


def test_committed_feature_network_matches_its_record():
    """Re-measure the held-out accuracy written next to the weights (same split, seed 0)."""
    record = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    x, y = load_digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test = perm[int(0.8 * len(x)):]
    acc = accuracy(load_classifier(), x[test], y[test])
    assert acc == pytest.approx(record["held_out_accuracy"], abs=1e-4)
    assert acc > 0.97


def test_committed_teacher_loads_as_a_class_conditional_edm_teacher():
    from onestep.build import build_teacher as load_teacher

    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": str(DIGITS_TEACHER)}})
    teacher = load_teacher(cfg, progress=False)
    assert teacher.network.kind == "edm" and teacher.cond_kind == "class" and teacher.num_classes == 10
    assert teacher.sample_shape == (1, 8, 8)
    n_params = sum(p.numel() for p in teacher.network.parameters())
    assert 0.6e6 < n_params < 0.8e6
    from onestep.nets.attention import attention_modules

    assert attention_modules(teacher.network)  # at least one attention block
    record = json.loads((DIGITS_TEACHER / "training.json").read_text())
    assert record["parameters"] == n_params and record["steps"] == 4000


def test_train_teacher_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "teacher"
    assert main(["train-teacher", "--config", "configs/digits-teacher.yaml", "--output", str(out),
                 "--set", "steps=3", "--set", "progress=false", "--set", "unet.block_out_channels=[8,16]",
                 "--set", "unet.norm_num_groups=4"]) == 0
    assert {"model_index.json", "pipeline.py", "unet", "scheduler", "training.json"} <= {p.name for p in out.iterdir()}
    from onestep.portable.pipeline import EDMPipeline

    pipe = EDMPipeline.from_pretrained(out)
    images = pipe(class_labels=[0, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    assert pipe.progress_bar is not None
    # and it is a valid teacher for distillation
    from onestep.build import build_teacher as load_teacher

    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": str(out)}})
    assert load_teacher(cfg, progress=False).num_classes == 10


def test_train_teacher_rejects_bad_config(tmp_path, capsys):
    assert main(["train-teacher", "--config", "configs/digits-teacher.yaml", "--output", str(tmp_path / "t"),
                 "--set", "dataset=cifar"]) == 2
    assert "config key 'dataset'" in capsys.readouterr().err


def test_the_bundled_teacher_code_is_the_portable_bundle():
    """The pipeline.py shipped with the digits teacher is ``portable.bundle()`` as it is now
    (regenerate: resources/README.md), so the teacher and the exports run the same code."""
    import onestep.portable as portable
    from onestep.portable.integrity import verify_checksums
    from onestep.resources import FASHION_TEACHER

    for teacher in (DIGITS_TEACHER, FASHION_TEACHER):  # the shipped teachers
        assert (teacher / "pipeline.py").read_text() == portable.bundle(), teacher.name
        verify_checksums(teacher)
        assert (teacher / "checksums.json").is_file()
