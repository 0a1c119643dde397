"""Config schema: YAML load, validation errors that name the key, overrides, round trip."""

import pytest

from onestep import config as config_mod
from onestep.errors import OnestepError


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


GMM = "teacher: {kind: gmm, means: [[0, 0], [1, 1]]}\n"


def test_public_keys_exist_with_defaults(tmp_path):
    cfg = config_mod.load(_write(tmp_path, GMM))
    for key in ("teacher.kind", "teacher.path", "objective.name", "objective.f", "objective.alpha",
                "train.steps", "train.batch_size", "train.fake_steps_per_gen", "train.lr_generator",
                "train.lr_fake", "train.seed", "train.mixed_precision", "train.checkpoint_every",
                "generator.sigma_init", "gan.weight"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
    assert cfg.generator.sigma_init == 2.5 and cfg.schedule.sigma_max == 80.0


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(OnestepError, match=r"unknown config key 'train\.lr'"):
        config_mod.load(_write(tmp_path, GMM + "train: {lr: 1}\n"))
    with pytest.raises(OnestepError, match=r"unknown config key 'trainer'"):
        config_mod.load(_write(tmp_path, GMM + "trainer: {}\n"))


@pytest.mark.parametrize("text,key", [
    ("train: {steps: ten}", "train.steps"),
    ("train: {steps: 1.5}", "train.steps"),
    ("train: {mixed_precision: fp8}", "train.mixed_precision"),
    ("generator: {sigma_init: [1]}", "generator.sigma_init"),
    ("train: {progress: 3}", "train.progress"),
])
def test_wrong_type_is_an_error_naming_the_key(tmp_path, text, key):
    with pytest.raises(OnestepError, match=rf"config key '{key}'"):
        config_mod.load(_write(tmp_path, GMM + text + "\n"))


def test_floats_without_a_dot_are_accepted(tmp_path):
    cfg = config_mod.load(_write(tmp_path, GMM + "train: {lr_generator: 1e-5, lr_fake: 3}\n"))
    assert cfg.train.lr_generator == 1e-5 and cfg.train.lr_fake == 3.0


def test_set_overrides_and_round_trip(tmp_path):
    cfg = config_mod.load(_write(tmp_path, GMM), ["train.steps=7", "objective.name=f_distill",
                                                   "objective.f=js", "gan.weight=0.001"])
    assert (cfg.train.steps, cfg.objective.name, cfg.objective.f, cfg.gan.weight) == (7, "f_distill", "js", 0.001)
    again = config_mod.loads(config_mod.dump_yaml(cfg))
    assert again == cfg
    with pytest.raises(OnestepError, match="--set expects key=value"):
        config_mod.load(_write(tmp_path, GMM), ["train.steps"])


@pytest.mark.parametrize("text,match", [
    ("teacher: {kind: gmm}", "teacher.means"),
    ("teacher: {kind: gmm, means: [[0, 0], [1]]}", "teacher.means"),
    (GMM + "teacher: {kind: gmm, means: [[0], [1]], stds: [1]}", "teacher.stds"),
    ("teacher: {kind: diffusers}", "teacher.path"),
    (GMM + "train: {batch_size: 0}", "train.batch_size"),
    (GMM + "objective: {name: nope}", "unknown objective 'nope'"),
    (GMM + "train: {betas: [0.9]}", "train.betas"),
])
def test_cross_field_validation(tmp_path, text, match):
    """``onestep.load_config``: the schema's checks, then the teacher kind's (teachers/kinds.py)."""
    from onestep import load_config

    with pytest.raises(OnestepError, match=match):
        load_config(_write(tmp_path, text))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(OnestepError, match="not valid YAML"):
        config_mod.load(_write(tmp_path, "teacher: [unclosed\n"))
    with pytest.raises(OnestepError, match="config file not found"):
        config_mod.load(tmp_path / "missing.yaml")
