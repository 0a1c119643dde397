"""The package as users get it: the public API, a wheel that carries its run-time data, renamed
config keys that still work (with one warning), and the README's key table equal to the schema."""

import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import yaml

import onestep
from onestep import config as config_mod
from onestep.errors import OnestepError

ROOT = Path(__file__).resolve().parents[1]


def test_public_api():
    from onestep import OneStepPipeline, Trainer, build_trainer, load_config  # noqa: F401

    assert onestep.available_objectives() == list(onestep.objectives.REGISTRY)
    cfg = load_config(ROOT / "configs" / "digits.yaml")
    assert isinstance(cfg, onestep.Config) and cfg.objective.name == "f_distill"
    with pytest.raises(AttributeError):
        onestep.no_such_name  # noqa: B018


def test_wheel_carries_the_runtime_data_and_runs_from_elsewhere(tmp_path):
    """`pip install .` (not editable): the demo config, digits teacher and feature network ship
    inside the wheel, and a config load from another directory finds them."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("onestep-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("onestep/resources/digits.yaml", "onestep/resources/digits-features.safetensors",
                   "onestep/resources/digits-teacher/model_index.json",
                   "onestep/resources/digits-teacher/unet/diffusion_pytorch_model.safetensors",
                   "onestep/portable/edm_form.py"):
        assert needed in names, needed
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import onestep, onestep.resources as r; from onestep.evaluation.digits_features import load_classifier;"
            "c = onestep.load_config(r.DEMO_CONFIG); load_classifier(); print(onestep.__file__); print(c.teacher.path)")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, teacher_path = out.stdout.split()
    assert module_file.startswith(str(site)) and teacher_path.startswith(str(site))
    assert (Path(teacher_path) / "unet" / "config.json").is_file()


GMM = {"teacher": {"kind": "gmm", "means": [[0.0, 0.0], [1.0, 1.0]]}}


@pytest.mark.parametrize("old,new,value", [(k, v, None) for k, v in config_mod.RENAMED.items()])
def test_renamed_keys_work_with_one_warning(old, new, value):
    section, name = old.split(".")
    new_section, new_name = new.split(".")
    values = {"discriminator.features": "fake_score", "discriminator.hidden": 64, "discriminator.loss_weight": 0.5,
              "discriminator.r1_weight": 0.1, "discriminator.sigma_sampler": "lognormal",
              "discriminator.sigma_range": None, "discriminator.lr": 3e-4}
    value = values[new]
    data = {**GMM, section: {name: value}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = config_mod.from_dict(data)
    msgs = [str(w.message) for w in caught if issubclass(w.category, config_mod.ConfigDeprecationWarning)]
    assert len(msgs) == 1 and old in msgs[0] and new in msgs[0]
    assert getattr(getattr(cfg, new_section), new_name) == value
    with pytest.raises(OnestepError, match="same setting"):
        config_mod.from_dict({**GMM, section: {name: value}, new_section: {new_name: value}})


def test_readme_key_table_is_the_schema():
    from onestep.config.keys import key_table

    text = (ROOT / "docs" / "configuration.md").read_text()
    start, end = text.index("<!-- keys:start -->"), text.index("<!-- keys:end -->")
    assert text[start + len("<!-- keys:start -->"):end].strip() == key_table().strip(), \
        "docs/configuration.md key table is stale: regenerate it with `make keys`"


def test_every_key_has_a_doc_line():
    from onestep.config.keys import key_table

    rows = [r for r in key_table().splitlines()[2:]]
    assert len(rows) > 60
    assert all(r.rstrip(" |").split("|")[-1].strip() for r in rows), [r for r in rows if r.endswith("|  |")]


def test_dry_run_yaml_reloads_identically(tmp_path):
    cfg = config_mod.load(ROOT / "configs" / "digits.yaml")
    again = config_mod.from_dict(yaml.safe_load(config_mod.dump_yaml(cfg)))
    assert again == cfg


TEACHER_CONFIGS = {"digits-teacher.yaml", "fashion-teacher.yaml"}  # read by `onestep train-teacher`
DISTILL_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name not in TEACHER_CONFIGS)


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Every distillation config the docs name passes the schema (keys, domains, relations) and its
    teacher kind's check as shipped."""
    cfg = onestep.load_config(path)
    assert isinstance(cfg, onestep.Config) and cfg.objective.name in onestep.available_objectives()


@pytest.mark.parametrize("name", sorted(TEACHER_CONFIGS))
def test_every_teacher_config_loads(name):
    """The teacher-training configs load as such (their data set is the one they are named after)."""
    from onestep.train.teacher_training import TeacherTrainingConfig

    cfg = config_mod.load(ROOT / "configs" / name, cls=TeacherTrainingConfig)
    assert cfg.unet.num_class_embeds == 10 and name.startswith(cfg.dataset.split("-")[0])


def _make_recipe(target: str) -> list[str]:
    """The words of a Makefile target's one command line (the line after ``target:``)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    return lines[start + 1].split()


def test_make_fashion_long_is_the_fashion_recipe_with_more_iterations():
    """`make fashion-long` (docs/results.md, run P) runs the fashion preset with only the budget
    changed: its overrides load through the schema, set train.steps to 2,700, and leave every
    other key of the shipped recipe as `make fashion` runs it."""
    short, long_ = _make_recipe("fashion"), _make_recipe("fashion-long")
    assert "--preset" in long_ and long_[long_.index("--preset") + 1] == "fashion"
    overrides = [long_[i + 1] for i, word in enumerate(long_) if word == "--set"]
    assert "--set" not in short and overrides == ["train.steps=2700"]
    recipe = ROOT / "onestep" / "resources" / "fashion.yaml"
    base = config_mod.to_dict(config_mod.load(recipe))
    longer = config_mod.to_dict(config_mod.load(recipe, overrides))  # as `onestep demo --set` loads it
    assert base["train"]["steps"] == 1800 and longer["train"]["steps"] == 2700
    longer["train"]["steps"] = base["train"]["steps"]
    assert longer == base
