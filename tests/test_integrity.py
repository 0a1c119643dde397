"""Integrity (issue 22, item 2): checkpoints carry a digest of their tensors and exported or trained
pipelines a checksums.json; a damaged latest checkpoint falls back to the previous sound one with
a one-line warning (or is refused when there is none), and a damaged pipeline is refused on load
by onestep and by the pipeline.py bundled in it."""

import shutil
import struct

import pytest
import torch
import yaml
from conftest import SMALL_GMM

from onestep.cli import main
from onestep.core.io import DIGEST_KEY, load_safetensors, safetensors_header
from onestep.errors import OnestepError, OnestepWarning


def _flip_data_byte(path, offset=100):
    """Flip one byte of the tensor data (past the header), as a failing disk might."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[start + offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.fixture
def run(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "train": {**SMALL_GMM["train"], "steps": 2, "checkpoint_every": 1,
                                                          "keep_checkpoints": 3}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    return tmp_path / "run", cfg


def test_checkpoints_record_a_digest_that_catches_one_flipped_bit(run):
    path = run[0] / "checkpoints" / "step-00000002.safetensors"
    assert DIGEST_KEY in safetensors_header(path)[1]
    load_safetensors(path)
    _flip_data_byte(path)
    with pytest.raises(OnestepError, match="is damaged"):
        load_safetensors(path)


def test_a_damaged_latest_checkpoint_falls_back_with_a_warning(run, capsys):
    run_dir, cfg = run
    _flip_data_byte(run_dir / "checkpoints" / "step-00000002.safetensors")
    with pytest.warns(OnestepWarning, match="skipping step-00000002.safetensors: .* is damaged"):
        assert main(["sample", "--run", str(run_dir), "--output", str(run_dir.parent / "x.npy"),
                     "--num-samples", "4"]) == 0
    assert "from step 1" in capsys.readouterr().out
    with pytest.warns(OnestepWarning, match="resuming from step-00000001.safetensors"):
        assert main(["distill", "--config", str(cfg), "--output", str(run_dir), "--resume", "latest",
                     "--set", "train.steps=3"]) == 0


def test_no_sound_checkpoint_is_refused_in_one_line(run, capsys):
    run_dir, _ = run
    for path in (run_dir / "checkpoints").iterdir():
        _flip_data_byte(path)
    assert main(["sample", "--run", str(run_dir), "--output", str(run_dir.parent / "x.npy")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("onestep: error")]
    assert len(err) == 1 and "no sound checkpoint" in err[0]


def test_a_damaged_pipeline_is_refused_by_onestep_and_by_its_own_code(tmp_path):
    from diffusers import DiffusionPipeline

    from onestep.portable.pipeline import EDMPipeline
    from onestep.resources import DIGITS_TEACHER

    assert (DIGITS_TEACHER / "checksums.json").is_file()  # the shipped teacher carries its checksums
    EDMPipeline.from_pretrained(DIGITS_TEACHER)
    copy = tmp_path / "teacher"
    shutil.copytree(DIGITS_TEACHER, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[start:start + 4096] = bytes(4096)  # zeroed tensor bytes: a valid file, wrong weights
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="is damaged"):
        EDMPipeline.from_pretrained(copy)
    with pytest.raises(ValueError, match="is damaged"):
        DiffusionPipeline.from_pretrained(copy, trust_remote_code=True)
    from onestep import config as config_mod
    from onestep.build import build_teacher

    with pytest.raises(OnestepError, match="is damaged"):
        build_teacher(config_mod.from_dict({"teacher": {"kind": "diffusers", "path": str(copy)}}), progress=False)


def test_digest_cost_on_a_demo_sized_checkpoint():
    """The check reads what a resume reads anyway; hashing the digits demo's ~11 MB of tensors costs
    milliseconds (the measured figure is in docs/results.md)."""
    import time

    from onestep.core.io import tensor_digest

    tensors = {f"w{i}": torch.randn(1000, 700) for i in range(4)}
    t0 = time.perf_counter()
    first = tensor_digest(tensors)
    assert time.perf_counter() - t0 < 5.0  # generous: a correctness test, not a benchmark
    assert tensor_digest(dict(reversed(tensors.items()))) == first  # order-independent
    tensors["w0"][0, 0] += 1e-7
    assert tensor_digest(tensors) != first


def test_class_labels_as_tensors_lists_or_ints(tmp_path):
    """DiT users pass class_labels as a tensor (issue 23 item 5): tensors, lists and ints give the
    same images; an out-of-range label is refused in one line."""
    from onestep.portable.pipeline import EDMPipeline, label_list
    from onestep.resources import DIGITS_TEACHER

    assert label_list(torch.tensor([1, 2]), 10) == label_list([1, 2], 10) == [1, 2] and label_list(3, 10) == [3]
    pipe = EDMPipeline.from_pretrained(DIGITS_TEACHER)

    def run(labels):
        return pipe(class_labels=labels, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="latent").images

    assert torch.equal(run(torch.tensor([1, 2])), run([1, 2]))
    with pytest.raises(ValueError, match="class label 12 is out of range: this pipeline has classes 0..9"):
        run(torch.tensor([1, 12]))


def test_a_checkpoint_of_the_previous_format_still_resumes(run):
    """Format 2 (before the digest and the named checkpoint objects) has the same tensors and
    metadata keys: it resumes, and the next checkpoint is written in format 3."""
    import json

    from safetensors.torch import load_file, save_file

    run_dir, cfg = run
    for path in (run_dir / "checkpoints").iterdir():
        tensors, meta = load_file(path), dict(safetensors_header(path)[1])
        meta.pop(DIGEST_KEY)
        meta["format"] = json.dumps("onestep-checkpoint-2")
        save_file(tensors, str(path), metadata=meta)
    assert main(["distill", "--config", str(cfg), "--output", str(run_dir), "--resume", "latest",
                 "--set", "train.steps=3"]) == 0
    newest = run_dir / "checkpoints" / "step-00000003.safetensors"
    assert json.loads(safetensors_header(newest)[1]["format"]) == "onestep-checkpoint-3"
