"""Fashion-MNIST: finding, unpacking and checking its files; the teacher and evaluation paths on it.

Most tests use a small subset written here in the idx format (so no test needs the 30 MB data
set); the real files are checked where present (Debian's dataset-fashion-mnist; .ci/run installs
it when it can) and skipped with a reason otherwise.
"""

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from onestep.cli import main
from onestep.data import fashion
from onestep.errors import OnestepError

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_images(x: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x803, len(x), 28, 28) + x.astype(np.uint8).tobytes()


def _idx_labels(y: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(y)) + y.astype(np.uint8).tobytes()


def _subset(n_train=40, n_test=20, seed=0) -> dict[str, bytes]:
    """Unpacked idx files of a small random subset (name -> bytes), labels cycling over 10 classes."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = NAMES[split]
        out[images] = _idx_images(rng.integers(0, 256, (n, 28, 28)))
        out[labels] = _idx_labels(np.arange(n) % 10)
    return out


@pytest.fixture
def subset(monkeypatch, tmp_path):
    """A subset's files; RAW_MD5 is theirs, the cache and Debian's folder live under tmp_path."""
    files = _subset()
    monkeypatch.setattr(fashion, "RAW_MD5", {k: hashlib.md5(v).hexdigest() for k, v in files.items()})
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ONESTEP_DATA", raising=False)
    return files


def _write(folder: Path, files: dict[str, bytes], packed: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if packed:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def test_reads_torchvision_layout_from_data_root(subset, tmp_path):
    _write(tmp_path / "mine" / "FashionMNIST" / "raw", subset, packed=False)
    x, y = fashion.load_fashion_mnist("train", root=tmp_path / "mine")
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    assert y.tolist() == [i % 10 for i in range(40)]
    x_test, _ = fashion.load_fashion_mnist("test", root=tmp_path / "mine")
    assert x_test.shape == (20, 1, 28, 28)
    raw = np.frombuffer(subset["train-images-idx3-ubyte"][16:], dtype=np.uint8).reshape(40, 28, 28)
    assert torch.equal(((x[:, 0] + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(raw.copy()))


def test_environment_variable_is_a_root(subset, tmp_path, monkeypatch):
    _write(tmp_path / "env" / "FashionMNIST" / "raw", subset, packed=False)
    monkeypatch.setenv("ONESTEP_DATA", str(tmp_path / "env"))
    assert fashion.locate() == tmp_path / "env"


def test_debian_archives_are_unpacked_once_into_the_cache(subset, tmp_path):
    _write(tmp_path / "system", subset, packed=True)
    found = fashion.locate()
    cache = tmp_path / "cache" / "onestep"
    assert found == cache
    raw = cache / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(subset)
    stamp = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    x, _ = fashion.load_fashion_mnist("test")  # now read from the cache, not unpacked again
    assert x.shape == (20, 1, 28, 28)
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamp


@pytest.mark.parametrize("damage", ["truncated", "other content"])
def test_a_damaged_archive_leaves_nothing_in_the_cache(subset, tmp_path, damage):
    system = _write(tmp_path / "system", subset, packed=True)
    victim = system / "train-images-idx3-ubyte.gz"
    data = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    else:
        victim.write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(OnestepError, match="train-images-idx3-ubyte") as info:
        fashion.locate()
    assert "\n" not in str(info.value)
    raw = tmp_path / "cache" / "onestep" / "FashionMNIST" / "raw"
    assert not raw.exists() or not [p for p in raw.iterdir() if p.name.startswith("train-images")
                                    or p.name.endswith(".tmp")]


def test_missing_data_says_where_it_looked_and_how_to_get_it(subset, tmp_path, capsys):
    with pytest.raises(OnestepError) as info:
        fashion.locate(tmp_path / "nowhere")
    message = str(info.value)
    for fragment in ("nowhere", str(tmp_path / "cache" / "onestep"), str(tmp_path / "system"),
                     "apt-get install dataset-fashion-mnist", "--download"):
        assert fragment in message
    assert main(["eval", "--pipeline", str(tmp_path / "p"), "--ref", "fashion-mnist"]) == 2


def test_a_corrupt_unpacked_file_is_refused(subset, tmp_path):
    raw = _write(tmp_path / "mine" / "FashionMNIST" / "raw", subset, packed=False)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(subset["t10k-labels-idx1-ubyte"][:-3])
    with pytest.raises(OnestepError, match="corrupt or truncated"):
        fashion.load_fashion_mnist("test", root=tmp_path / "mine")


def test_train_teacher_on_fashion_resumes_bit_for_bit(subset, tmp_path):
    """Two steps, a restart, two more: the same weights as four steps in one go."""
    root = _write(tmp_path / "mine" / "FashionMNIST" / "raw", subset, packed=False).parents[1]
    tiny = ["--set", f"data_root={root}", "--set", "progress=false", "--set", "unet.block_out_channels=[8,8,16]",
            "--set", "unet.norm_num_groups=4", "--set", "checkpoint_every=2", "--set", "log_every=1"]
    config = ["train-teacher", "--config", "configs/fashion-teacher.yaml"]
    assert main([*config, "--output", str(tmp_path / "a"), "--set", "steps=4", *tiny]) == 0
    assert main([*config, "--output", str(tmp_path / "b"), "--set", "steps=2", *tiny]) == 0
    with open(tmp_path / "b.training" / "log.jsonl", "a") as fh:  # a run killed after step 2's checkpoint
        fh.write(json.dumps({"step": 3, "loss": 9.0, "seconds": 1.0}) + "\n")
    assert main([*config, "--output", str(tmp_path / "b"), "--set", "steps=4", "--resume", "--overwrite", *tiny]) == 0
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    log = [json.loads(line) for line in (tmp_path / "b.training" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    record = json.loads((tmp_path / "b" / "training.json").read_text())
    assert record["steps"] == 4 and record["dtype"] == "float16" and record["dataset"] == "fashion-mnist"
    from safetensors.torch import load_file

    from onestep.portable.pipeline import EDMPipeline

    assert {v.dtype for v in load_file(tmp_path / "b" / weights).values()} == {torch.float16}  # stored so
    pipe = EDMPipeline.from_pretrained(tmp_path / "b")
    images = pipe(class_labels=[0, 9], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()


def test_train_teacher_refuses_a_changed_config_on_resume(subset, tmp_path, capsys):
    root = _write(tmp_path / "mine" / "FashionMNIST" / "raw", subset, packed=False).parents[1]
    tiny = ["--set", f"data_root={root}", "--set", "progress=false", "--set", "unet.block_out_channels=[8,8,16]",
            "--set", "unet.norm_num_groups=4", "--set", "checkpoint_every=1"]
    config = ["train-teacher", "--config", "configs/fashion-teacher.yaml", "--output", str(tmp_path / "t")]
    assert main([*config, "--set", "steps=1", *tiny]) == 0
    capsys.readouterr()
    assert main([*config, "--set", "steps=2", "--set", "lr=1e-3", "--resume", "--overwrite", *tiny]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config changed (lr)" in err[0]
    assert main([*config, "--set", "steps=2", *tiny, "--overwrite"]) == 2  # checkpoints there: --resume or elsewhere
    assert "already holds checkpoints" in capsys.readouterr().err


REAL = fashion.SYSTEM_DIR
needs_real = pytest.mark.skipif(not (REAL / "t10k-images-idx3-ubyte.gz").is_file() and not (
    fashion.cache_root() / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


@needs_real
def test_the_real_test_split():
    x, y = fashion.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [1000] * 10


@needs_real
def test_the_shipped_feature_network_meets_its_record():
    """Re-measure the test accuracy recorded next to the weights (>= 0.90, trained on train only)."""
    from onestep.evaluation.classifier_training import accuracy
    from onestep.evaluation.fashion_features import load_classifier
    from onestep.resources import FASHION_FEATURES

    record = json.loads(FASHION_FEATURES.with_suffix(".json").read_text())
    x, y = fashion.load_fashion_mnist("test")
    acc = accuracy(load_classifier(), x, y)
    assert acc == pytest.approx(record["test_accuracy"], abs=1e-4) and acc >= 0.90


def test_the_shipped_pairs_are_the_shipped_teachers():
    """The benchmark's regression pairs (data.pairs in fashion.yaml) belong to the shipped teacher
    and schedule, and a few of them re-solve to the stored sample from the stored noise."""
    from onestep.build import build_teacher, load_config, teacher_cache
    from onestep.resources import FASHION_CONFIG, FASHION_TEACHER
    from onestep.sampling import teacher_samples

    cfg = load_config(FASHION_CONFIG)
    assert Path(cfg.data.pairs) == FASHION_TEACHER / "pairs.safetensors"
    teacher = build_teacher(cfg, progress=False)
    pairs = teacher_cache(teacher, cfg)
    pairs.check()  # fingerprint and schedule
    assert len(pairs.noise) == cfg.data.cache_size
    z, x, _ = pairs.draw_pairs(3, torch.Generator().manual_seed(0))
    idx = [int((pairs.noise == zi).flatten(1).all(1).nonzero()[0]) for zi in z]
    labels = pairs._ready().labels[idx]
    again = teacher_samples(teacher, z, labels, cfg.schedule, cfg.data.cache_steps, 3)
    torch.testing.assert_close(again, x, atol=2e-3, rtol=0)  # the samples are stored in fp16


def test_the_fashion_benchmark_reads_its_teachers_stored_evaluation(subset, tmp_path, monkeypatch, capsys):
    """`onestep demo --preset fashion` end to end on a tiny teacher and the subset: the teacher is
    evaluated once (eval/teacher_eval.py), the benchmark reads that and scores the student at
    every evaluation seed."""
    import dataclasses
    import importlib.util

    from onestep import demo
    from onestep.evaluation.teacher_eval import TeacherProtocol

    root = _write(tmp_path / "mine" / "FashionMNIST" / "raw", subset, packed=False).parents[1]
    monkeypatch.setenv("ONESTEP_DATA", str(root))
    teacher = tmp_path / "teacher"
    assert main(["train-teacher", "--config", "configs/fashion-teacher.yaml", "--output", str(teacher),
                 "--set", "steps=2", "--set", "progress=false", "--set", "unet.block_out_channels=[8,8,16]",
                 "--set", "unet.norm_num_groups=4"]) == 0
    spec = importlib.util.spec_from_file_location("teacher_eval", "eval/teacher_eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--teacher", str(teacher), "--nfe", "1,3", "--sweep-samples", "16", "--num-samples", "16",
                        "--seeds", "0,1"]) == 0
    stored = json.loads((teacher / "evaluation.json").read_text())
    assert stored["best_nfe"] in (1, 3) and set(stored["fd"]) == {"0", "1"} and stored["dtype"] == "float32"
    assert (teacher / "samples.png").is_file()

    protocol = TeacherProtocol("fashion", "fashion-mnist", (1, 3), 16, 16, (0, 1))
    monkeypatch.setitem(demo.PRESETS, "fashion", dataclasses.replace(demo.PRESETS["fashion"], num_samples=16,
                                                                    seeds=(0, 1), teacher=protocol))
    # a user's own teacher gets its own pairs file (the shipped one is refused for another teacher)
    pairs = teacher / "pairs.safetensors"
    assert main(["pairs", "--config", "onestep/resources/fashion.yaml", "--set", f"teacher.path={teacher}",
                 "--set", "data.cache_size=8", "--set", "data.cache_steps=2", "--set", "train.progress=false",
                 "--output", str(pairs), "--dtype", "fp16"]) == 0
    out = tmp_path / "bench"
    report = demo.run_demo(out, overrides=[f"teacher.path={teacher}", "train.steps=2", "train.batch_size=4",
                                           "train.checkpoint_every=2", "train.sample_every=0",
                                           f"data.pairs={pairs}", "regression.batch_size=4"], preset="fashion")
    assert not (out / "run" / "teacher_cache.safetensors").exists()  # the pairs were read, not made
    assert report["features"] == "fashion" and report["teacher_best"]["nfe"] == stored["best_nfe"]
    assert set(report["student"]["fd_by_seed"]) == {"0", "1"} == set(report["fd_ratio_by_seed"])
    assert report["teacher_best"]["fd_by_seed"] == stored["fd"]  # read, not re-sampled
    assert report["fd_ratio_student_to_best_teacher"] == pytest.approx(report["student"]["fd"] / stored["fd"]["0"])
    assert report["nearest_training_distance"]["teacher_median"] == stored["nearest_training_distance"]["median"]
    assert 0.0 <= report["nearest_training_distance"]["held_out_below_teacher_p5"] <= 1.0  # the test split's
    for name in ("report.md", "samples.png", "teacher.png", "fd_vs_nfe.png", "discriminator.png"):
        assert (out / name).is_file(), name
    assert (out / "pipeline" / "model_index.json").is_file()
    assert "| 1 |" in (out / "report.md").read_text()  # the per-seed table
    assert "Real held-out images by the same measure" in (out / "report.md").read_text()
    copying = report["nearest_training_distance"]["data_copying"]  # Meehan et al.'s test, student vs test split
    assert copying["cells"] == 20 and copying["cells_used"] == len(copying["per_cell"])
    sentence = f"C_T = **{copying['c_t']:+.1f}**" in (out / "report.md").read_text()
    assert sentence == (copying["cells_used"] > 0)
    # the same run scored as a row of the f grid (eval/benchmark_row.py --preset fashion --score-only)
    spec = importlib.util.spec_from_file_location("benchmark_row", "eval/benchmark_row.py")
    row_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(row_script)
    capsys.readouterr()
    assert row_script.main(["--preset", "fashion", "--output", str(out / "run"), "--score-only", "--eval-seeds", "0",
                            "1", "--num-samples", "16"]) == 0
    row = json.loads((out / "run" / "benchmark.json").read_text())
    assert row["fd_seed0"] == pytest.approx(report["student"]["fd_by_seed"]["0"])
    assert row["teacher_best"]["fd"] == stored["fd"] and row["features"] == "fashion"
    # Meehan et al.'s test side by side (eval/data_copying.py): teacher pairs, student, other test images
    spec = importlib.util.spec_from_file_location("data_copying", "eval/data_copying.py")
    copying_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copying_script)
    capsys.readouterr()
    assert copying_script.main(["--run", str(out / "run"), "--pairs", str(pairs), "--num-samples", "8",
                                "--cells", "2"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["samples"].split()[0] for r in rows] == ["teacher", "student", "real"]
    assert rows[0]["below_teacher_p5"] <= 0.125  # the teacher's own share: at most one of its 8 samples
    assert all(r["cells"] == 2 and 0 <= r["cells_used"] <= 2 for r in rows)
    assert copying_script.main(["--run", str(out / "run"), "--pairs", str(pairs), "--num-samples", "9"]) == 2
    assert "--num-samples must be 1-8" in capsys.readouterr().err


def test_an_interrupted_teacher_evaluation_resumes_where_it_stopped(subset, tmp_path, monkeypatch):
    """eval/teacher_eval.py keeps each finished measurement: killed after the first sweep point, the
    same command redoes only what is missing and gives the uninterrupted result."""
    import importlib.util

    from onestep.evaluation import teacher_eval

    root = _write(tmp_path / "mine" / "FashionMNIST" / "raw", subset, packed=False).parents[1]
    monkeypatch.setenv("ONESTEP_DATA", str(root))
    teacher = tmp_path / "teacher"
    assert main(["train-teacher", "--config", "configs/fashion-teacher.yaml", "--output", str(teacher),
                 "--set", "steps=2", "--set", "progress=false", "--set", "unet.block_out_channels=[8,8,16]",
                 "--set", "unet.norm_num_groups=4"]) == 0
    spec = importlib.util.spec_from_file_location("teacher_eval", "eval/teacher_eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = ["--teacher", str(teacher), "--nfe", "1,3", "--sweep-samples", "16", "--num-samples", "16", "--seeds", "0,1"]
    assert script.main(args) == 0
    whole = json.loads((teacher / "evaluation.json").read_text())
    assert not (teacher / teacher_eval.PARTIAL_FILE).exists()

    real, calls = teacher_eval.nfe_sweep, []

    def dies_on_the_second(*a, **k):
        calls.append(a[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(teacher_eval, "nfe_sweep", dies_on_the_second)
    (teacher / "evaluation.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        script.main(args)
    kept = json.loads((teacher / teacher_eval.PARTIAL_FILE).read_text())
    assert list(kept["sweep"]) == ["1"] and not (teacher / "evaluation.json").exists()
    calls.clear()
    monkeypatch.setattr(teacher_eval, "nfe_sweep", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    assert script.main(args) == 0
    assert calls == [(3,)]  # NFE 1 was not sampled again
    again = json.loads((teacher / "evaluation.json").read_text())
    def measured(result):  # everything but the timings
        return {**{k: v for k, v in result.items() if k not in ("seconds", "images_per_s", "sweep")},
                "sweep": [(r["nfe"], r["fd"]) for r in result["sweep"]]}
    assert measured(again) == measured(whole)
    assert not (teacher / teacher_eval.PARTIAL_FILE).exists()
