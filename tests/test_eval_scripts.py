"""Every eval/ script runs at a tiny budget and prints its figure, so none breaks silently.

``gpu_check.sh`` needs a GPU; ``fid.py`` runs in test_watch_and_eval.py (with the stand-in
Inception weights) and test_hostile.py; ``teacher_eval.py`` and ``data_copying.py`` in test_fashion.py (on a tiny
Fashion-MNIST teacher); ``train_fashion_features.py`` below, in-process on a subset; ``term_gradients.py`` and
``checkpoint_mean.py`` and ``discriminator_heldout.py`` below, on runs they train. A new script fails ``test_every_script_has_a_smoke_run``
until it gets a case here.
"""

import gzip
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "eval"
ELSEWHERE = {"fid.py", "teacher_eval.py", "data_copying.py"}

# script -> (arguments, text its output must contain); {tmp} is the test's directory
CASES = {
    "bench_attention.py": (["--batch", "1", "--repeats", "1"], "time/math"),
    "bench_step.py": (["--teacher", "configs/digits.yaml", "--objectives", "dmd,uni_instruct:js", "--batch", "8",
                       "--repeats", "1", "--gan"], "GAN term: features + heads fwd+bwd(x)"),
    "benchmark_row.py": (["--output", "{tmp}/bench", "--eval-seeds", "0", "--num-samples", "16", "--set",
                             "train.steps=2", "train.checkpoint_every=2", "train.sample_every=0", "data.cache_size=8",
                             "train.batch_size=8", "regression.batch_size=4"], '"fd_seed0"'),
    "fashion_grid.py": (["--output", "{tmp}/grid", "--dry-run", "--set", "train.steps=400"],
                        "benchmark_row.py --preset fashion"),
    "gmm_objectives.py": (["--output", "{tmp}/gmm", "--steps", "2", "--only", "dmd", "--num-samples", "64",
                           "--set", "network.fit_steps=20"], "MMD"),
    "memory_estimate.py": (["--processes", "1", "--configs", "cifar10-ddpm-sid"], "GiB per GPU"),
    "nfe_sweep.py": (["--teacher", "onestep/resources/digits-teacher", "--output", "{tmp}/nfe", "--num-samples", "16",
                      "--nfe", "1,3"], "FD-digits"),
    "uni_instruct_terms.py": (["--config", "configs/gmm.yaml", "--output", "{tmp}/ui", "--steps", "3", "--every", "1",
                               "--set", "objective.name=uni_instruct", "objective.f=js", "objective.ratio_warmup=1",
                               "network.fit_steps=20", "train.batch_size=16"], '"bin0": {"sim"'),
    "train_digits_features.py": (["--output", "{tmp}/digits.safetensors", "--steps", "2"], "held-out accuracy"),
}


def test_every_script_has_a_smoke_run():
    scripts = {p.name for p in EVAL.glob("*.py")}
    below = {"train_fashion_features.py", "term_gradients.py", "checkpoint_mean.py", "discriminator_heldout.py"}
    assert scripts == set(CASES) | ELSEWHERE | below, scripts ^ (set(CASES) | ELSEWHERE | below)


@pytest.mark.parametrize("script", sorted(CASES))
def test_script_prints_its_figure(script, tmp_path):
    args, expected = CASES[script]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(EVAL / script), *[a.format(tmp=tmp_path) for a in args]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout, proc.stdout[-2000:]


def test_train_fashion_features_runs_on_a_subset(tmp_path, monkeypatch, capsys):
    """In-process (the subset's md5s replace the data set's): two steps, a record next to the weights."""
    import numpy as np

    from onestep.data import fashion

    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 30), ("t10k", 20)):
        files[f"{prefix}-images-idx3-ubyte"] = (b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                              + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        files[f"{prefix}-labels-idx1-ubyte"] = (b"\x00\x00\x08\x01" + n.to_bytes(4, "big")
                                              + (np.arange(n) % 10).astype(np.uint8).tobytes())
    (tmp_path / "data").mkdir()
    for name, data in files.items():
        (tmp_path / "data" / f"{name}.gz").write_bytes(gzip.compress(data))
    monkeypatch.setattr(fashion, "RAW_MD5", {k: hashlib.md5(v).hexdigest() for k, v in files.items()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.delenv("ONESTEP_DATA", raising=False)
    spec = importlib.util.spec_from_file_location("train_fashion_features", EVAL / "train_fashion_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "fashion.safetensors"
    assert module.main(["--output", str(out), "--steps", "2", "--batch-size", "8",
                        "--data-root", str(tmp_path / "data")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".json").is_file()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    missing = module.main(["--output", str(tmp_path / "x.safetensors"), "--data-root", str(tmp_path / "nowhere")])
    assert missing == 2 and not (tmp_path / "x.safetensors").exists()


def test_scripts_use_the_public_api():
    """The eval/ scripts import onestep's public names only (``from onestep import ...``, and the
    config module), so the package's internals can move without breaking them."""
    import ast

    import onestep

    for path in EVAL.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onestep"):
                assert node.module == "onestep", f"{path.name}: from {node.module} import ..."
                for alias in node.names:
                    assert alias.name == "config" or alias.name in onestep.__all__, f"{path.name}: {alias.name}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("onestep.") for a in node.names), path.name


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EVAL / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_run(run: Path, *checkpoints: str) -> Path:
    """A two-iteration digits benchmark row in ``run`` (scored on 16 samples at seed 0), keeping the
    checkpoints that ``checkpoints`` (``train.*`` overrides) ask for."""
    row = _script("benchmark_row.py")
    assert row.main(["--output", str(run), "--eval-seeds", "0", "--num-samples", "16", "--set", "train.steps=2",
                     *checkpoints, "train.sample_every=0", "data.cache_size=8", "train.batch_size=8",
                     "regression.batch_size=4"]) == 0
    return run


def _files(run: Path) -> dict[str, int]:
    """Every file of ``run`` (its lock aside) with its modification time: a run read, not trained, keeps it."""
    return {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".onestep.lock"}


def test_benchmark_row_divergence_check(tmp_path, capsys):
    """The criteria read the run: the warm-up's checkpoint and the last one both scored, the
    gradient norms from the log; without the warm-up's checkpoint, one line and exit 2."""
    import json

    row = _script("benchmark_row.py")
    base = ["--output", str(tmp_path / "run"), "--eval-seeds", "0", "--num-samples", "16", "--divergence-check",
            "--set", "train.steps=4", "train.sample_every=0", "data.cache_size=8", "train.batch_size=8",
            "regression.batch_size=4", "objective.ratio_warmup=2", "train.log_every=1"]
    assert row.main(base + ["train.checkpoint_every=2"]) == 0
    check = json.loads((tmp_path / "run" / "benchmark.json").read_text())["divergence"]
    assert check["warmup_step"] == 2 and check["nonfinite_skipped"] == 0
    assert check["fd_raw_at_warmup"] > 0 and check["fd_raw_at_end"] > 0
    assert check["fd_raw_at_warmup"] != check["fd_raw_at_end"]  # two different generators were scored
    assert check["diverged"] == (check["grad_norm_max_after"] > 10 * check["grad_norm_at_warmup"]
                                 or check["fd_raw_at_end"] > check["fd_raw_at_warmup"])
    # --step scores a kept checkpoint (a learning-curve point) into its own file; the final row stays
    final = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    scored = ["--output", str(tmp_path / "run"), "--eval-seeds", "0", "--num-samples", "16", "--score-only"]
    assert row.main(scored + ["--step", "2"]) == 0
    early = json.loads((tmp_path / "run" / "benchmark_step2.json").read_text())
    assert early["step"] == 2 and final["step"] == 4 and early["fd_seed0"] != final["fd_seed0"]
    assert json.loads((tmp_path / "run" / "benchmark.json").read_text()) == final
    capsys.readouterr()
    assert row.main(scored[:-1] + ["--step", "2"]) == 2  # --step without --score-only would retrain
    assert "add --score-only" in capsys.readouterr().err
    other = ["--output", str(tmp_path / "other"), *base[2:], "train.checkpoint_every=3"]
    assert row.main(other) == 2  # step 2 was never written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint of step 2" in err[0], err


def test_fashion_grid_keeps_the_recipes_balance_per_family_and_checks_divergence(capsys):
    """sid, sida and uni_instruct sum their gradient over a sample's 784 values where f_distill and
    dmd average it, so their rows carry the recipe's GAN and regression weights and its gradient
    clipping threshold times 784; a --set of either weight is read at f_distill's scale and scaled
    alike."""
    from onestep import PRESETS, load_config

    recipe = load_config(PRESETS["fashion"].config)
    grid = _script("fashion_grid.py")
    assert grid.main(["--output", "unused", "--dry-run", "--set", "train.steps=400"]) == 0
    commands = {line.split("--output ")[1].split()[0].rsplit("/", 1)[1]: line
                for line in capsys.readouterr().out.splitlines()}
    for row, line in commands.items():  # every row's overrides make a valid config of its objective
        overrides = line.split(" --set ")[1].split(" --")[0].split()
        assert load_config(PRESETS["fashion"].config, overrides).objective.name in row, row
    scaled = (f"gan.weight={recipe.gan.weight * 784:g}", f"regression.weight={recipe.regression.weight * 784:g}",
              f"train.grad_clip={recipe.train.grad_clip * 784:g}")
    for row in ("sid_s0", "sida_s0", "uni_instruct_js_s0", "uni_instruct_rkl_s0"):
        assert all(term in commands[row] for term in scaled), commands[row]
    for row in ("f_distill_js_s0", "dmd_s0"):
        assert not any(key in commands[row] for key in ("gan.weight", "regression.weight", "grad_clip")), commands[row]
    # uni_instruct rows are checked for divergence after the ratio's warm-up (10% of 400 steps), so
    # they keep the warm-up's checkpoint; the other rows keep the recipe's checkpoints
    for row in ("uni_instruct_js_s0", "uni_instruct_fkl_s0"):
        assert commands[row].endswith("train.checkpoint_every=40 train.keep_checkpoints=11 --divergence-check")
    assert not any("--divergence-check" in commands[row] for row in ("f_distill_js_s0", "sida_s0", "dmd_s0"))
    assert grid.main(["--output", "unused", "--dry-run", "--only", "sid", "--set", "regression.weight=3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(f"regression.weight={784 * 3:g} train.grad_clip={784 * recipe.train.grad_clip:g}"), line


def test_term_gradients_measures_each_term_of_a_run(tmp_path, capsys):
    """Every term of the digits recipe (objective, GAN, regression) pulls with a non-zero gradient,
    the sum's gradient obeys the triangle inequality, and the run directory is left as it was
    (read, not trained)."""
    import json

    run = _tiny_run(tmp_path / "run", "train.checkpoint_every=2")
    before = _files(run)
    terms = _script("term_gradients.py")
    capsys.readouterr()
    assert terms.main(["--run", str(run), "--batches", "2"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["step"] == 2 and set(result["mean"]) == {"objective", "gan", "regression", "total"}
    for batch in result["per_batch"]:
        assert min(batch["objective"], batch["gan"], batch["regression"]) > 0, batch
        assert batch["total"] <= (batch["objective"] + batch["gan"] + batch["regression"]) * (1 + 1e-5), batch
    assert _files(run) == before
    assert terms.main(["--run", str(run), "--step", "1"]) == 2
    assert "no checkpoint of step 1" in capsys.readouterr().err


def test_checkpoint_mean_scores_the_benchmarks_generator_and_means_of_checkpoints(tmp_path, capsys):
    """The EMA at the last step scores what benchmark_row scores; a mean of two raw checkpoints has
    the mean of their weights (and another FD than either); the run is left as it was; an unkept
    step is one line and exit 2."""
    import json

    import torch

    run = _tiny_run(tmp_path / "run", "train.checkpoint_every=1", "train.keep_checkpoints=2")
    benchmark = json.loads((run / "benchmark.json").read_text())
    before = _files(run)
    mean = _script("checkpoint_mean.py")
    capsys.readouterr()

    def fd(*extra):
        assert mean.main(["--run", str(run), "--num-samples", "16", *extra]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[-1])["fd_digits"]

    assert fd("--steps", "2") == pytest.approx(benchmark["fd_seed0"], rel=1e-6)
    raw = {s: fd("--raw", "--steps", str(s)) for s in (1, 2)}
    both = fd("--raw", "--steps", "1,2")
    assert both not in raw.values()
    from onestep import load_generator

    g1, g2 = (load_generator(run, step=s)[0].state_dict() for s in (1, 2))
    averaged = mean.mean_generator(run, [1, 2], ema=False).state_dict()
    moved = [k for k in g1 if g1[k].is_floating_point() and not torch.equal(g1[k], g2[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(averaged[k], (g1[k] + g2[k]) / 2)
    assert _files(run) == before
    assert mean.main(["--run", str(run), "--steps", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint of step 7" in err[0], err


def test_discriminator_heldout_repeats_the_logs_check_on_more_samples(tmp_path, capsys, monkeypatch):
    """Per sigma bin a mean accuracy in [0, 1] with its standard error over the repeats; the run is
    left as it was; the check's networks run in chunks and give what one batch gives; too few
    samples is one line and exit 2."""
    import json

    import torch

    from onestep import build_trainer, checkpoint_of, load_config
    from onestep.distill import critic

    run = _tiny_run(tmp_path / "run", "train.checkpoint_every=2")
    before = _files(run)
    check = _script("discriminator_heldout.py")
    capsys.readouterr()
    assert check.main(["--run", str(run), "--samples", "40", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1])
    assert result["step"] == 2 and result["pairs_per_bin"] == 8 and len(result["bins"]) == 5
    assert [b["sigma"] for b in result["bins"]] == ["< 0.05", "0.05-0.2", "0.2-1", "1-5", "> 5"]
    for b in result["bins"]:
        assert 0 <= b["accuracy"] <= 1 and b["accuracy_se"] >= 0 and b["logr_std"] > 0, b
    assert "| < 0.05 |" in out
    assert _files(run) == before

    trainer = build_trainer(load_config(run / "config.yaml", ["train.progress=false"]), run)
    try:
        trainer.restore(checkpoint_of(run, None))

        def evaluated(chunk):
            monkeypatch.setattr(critic, "EVAL_CHUNK", chunk)
            rng = torch.Generator().manual_seed(5)
            return trainer.method.evaluate_discriminator(trainer.holdout, rng, 40, trainer.device)

        whole, chunked = evaluated(1000), evaluated(16)
    finally:
        trainer.close()
    for key in ("disc_acc_bins", "logr_std"):
        assert chunked[key] == pytest.approx(whole[key], abs=1e-5), key
    assert chunked["disc_acc_heldout"] == pytest.approx(whole["disc_acc_heldout"], abs=1e-5)

    assert check.main(["--run", str(run), "--samples", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--samples must be at least 10" in err[0], err
