"""Real data checked at the door (issue 22, item 3): a data set or evaluation reference that is
empty, non-finite, out of range, unreadable, of mixed sizes or of another shape than the samples
is refused in one line; --ref is a literal name, never a pattern."""

import warnings

import numpy as np
import pytest
import torch
import yaml
from _tiny import save_pixel_pipeline

from onestep.cli import main
from onestep.config import loads
from onestep.errors import OnestepError, OnestepWarning
from onestep.evaluation import score


@pytest.fixture(scope="module")
def pixel_teacher(tmp_path_factory):
    from diffusers import DDPMScheduler

    return save_pixel_pipeline(tmp_path_factory.mktemp("t") / "teacher", DDPMScheduler())


def _distill(tmp_path, teacher, dataset, **objective):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": teacher},
                                   "objective": objective or {"name": "f_distill", "f": "js"},
                                   "data": {"dataset": str(dataset)},
                                   "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "progress": False}}))
    return main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")])


BAD_ARRAYS = [
    ("nan", np.full((4, 8, 8, 3), np.nan, dtype=np.float32), "NaN or infinite"),
    ("0-255 floats", np.full((4, 8, 8, 3), 200.0, dtype=np.float32), "outside the documented [-1, 1]"),
    ("no images", np.zeros((0, 8, 8, 3), dtype=np.uint8), "holds no images"),
]


@pytest.mark.parametrize("name,x,fragment", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
def test_a_bad_npz_data_set_is_refused_before_anything_is_written(tmp_path, capsys, pixel_teacher, name, x, fragment):
    data = tmp_path / "data.npz"
    np.savez(data, x=x)
    assert _distill(tmp_path, pixel_teacher, data) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "run").exists()


def test_an_unused_data_set_is_named_in_a_warning(tmp_path, pixel_teacher):
    with pytest.warns(OnestepWarning, match=r"not read by this run: data.dataset \('imagenet'\)"):
        assert _distill(tmp_path, pixel_teacher, "imagenet", name="dmd") == 0


UNREAD = [  # (config text, keys the one warning line must name)
    ("objective: {name: dmd}\ndiscriminator: {hidden: 32, head: mean}\ngan: {sigma: objective}\n",
     ["discriminator.head", "discriminator.hidden", "gan.sigma"]),
    ("objective: {name: sid}\ndata: {dataset: digits, root: /data}\n", ["data.dataset", "data.root"]),
    ("objective: {name: f_distill, f: js}\ndata: {root: /data}\n", ["data.root"]),
]


@pytest.mark.parametrize("text,keys", UNREAD, ids=["discriminator", "data", "root-without-dataset"])
def test_keys_the_run_does_not_read_are_named_in_one_warning(text, keys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loads(text)
    lines = [str(w.message) for w in caught if issubclass(w.category, OnestepWarning)]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert all(k in lines[0] for k in keys), lines[0]


@pytest.mark.parametrize("text", ["objective: {name: f_distill, f: js}\ndiscriminator: {hidden: 32}\n",
                                  "objective: {name: dmd}\ngan: {weight: 0.01}\ndiscriminator: {head: mean}\n",
                                  "objective: {name: dmd}\ndiscriminator: {monitor: true, hidden: 8}\n"
                                  "data: {dataset: digits}\n"])
def test_keys_the_run_reads_raise_no_warning(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnestepWarning)
        loads(text)


SAMPLES = torch.zeros(6, 1, 8, 8)


def _refused(fragment, ref, samples=SAMPLES, tmp_path=None):
    with pytest.raises(OnestepError, match=fragment) as info:
        score.evaluate(samples, str(ref), "digits", ("fid",), cache_root=tmp_path)
    assert "\n" not in str(info.value)


def test_eval_reference_folders_are_read_or_refused_by_name(tmp_path):
    from PIL import Image

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image")
    _refused("notes.txt is not an image", junk, tmp_path=tmp_path)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (8, 8)).save(mixed / "a.png")
    Image.new("L", (9, 9)).save(mixed / "b.png")
    _refused("differ in size", mixed, tmp_path=tmp_path)


def test_eval_reference_of_another_shape_or_with_nans_is_refused(tmp_path):
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.zeros((6, 3, 32, 32), dtype=np.uint8))
    _refused("32x32 RGB but the samples are 8x8 grey", rgb, tmp_path=tmp_path)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((6, 1, 8, 8), np.nan, dtype=np.float32))
    _refused("NaN or infinite", nan, tmp_path=tmp_path)


def test_eval_ref_is_a_literal_name_never_a_pattern(tmp_path):
    (tmp_path / "digits-digits-stats.npz").write_bytes(b"cached")
    _refused("neither images", "dig*", tmp_path=tmp_path)


def test_weak_messages_are_one_clear_line(tmp_path, capsys):
    """Issue 22's weak messages: a directory as --config, f_alpha without f: alpha, a dangling link
    as --output, a resume after changing the objective names objective.name first, a dry run that
    fits no GPU says so."""
    from conftest import SMALL_GMM

    def one_line(argv, fragment):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err

    one_line(["distill", "--config", tmp_path, "--output", tmp_path / "r"], "is a directory; give a YAML file")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "objective": {"name": "f_distill", "f": "js", "f_alpha": 0.5}}))
    one_line(["distill", "--config", cfg, "--output", tmp_path / "r", "--dry-run"], "only used with objective.f: alpha")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "train": {**SMALL_GMM["train"], "steps": 1, "checkpoint_every": 1}}))
    one_line(["distill", "--config", cfg, "--output", link], "dangling symbolic link")
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    one_line(["distill", "--config", cfg, "--output", tmp_path / "run", "--resume", "latest", "--set",
              "objective.name=sid"], "config differs in objective.name")
    for text, fragment in (("", "a gmm teacher needs a list of means"),
                           ("teacher: {kind: gmm, means: [[0, 0]]}\ndata: {dataset: digits}\n", "makes points")):
        cfg.write_text(text)
        one_line(["distill", "--config", cfg, "--output", tmp_path / "new"], fragment)
        assert not (tmp_path / "new").exists()  # nothing written, no lock left
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "train": {**SMALL_GMM["train"], "steps": 1, "checkpoint_every": 1}}))
    assert main(["distill", "--config", str(cfg), "--output", "unused", "--dry-run", "--set",
                 "train.batch_size=200000000"]) == 0
    assert "# warning: more than one GPU holds" in capsys.readouterr().out


def test_labels_an_unconditional_teacher_cannot_use_are_named(tmp_path, pixel_teacher):
    from PIL import Image

    data = tmp_path / "folder"
    for label in ("cat", "dog"):
        (data / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(data / label / f"{i}.png")
    with pytest.warns(OnestepWarning, match="its labels are not used"):
        assert _distill(tmp_path, pixel_teacher, data) == 0


def test_a_resolved_config_reloaded_raises_no_warning():
    """A run's config.yaml (the recipe's values filled in) is not 'keys set away from defaults'."""
    from onestep.config import to_dict

    for name in ("dmd", "sid", "diff_instruct", "sim"):
        text = yaml.safe_dump(to_dict(loads(f"objective: {{name: {name}}}")))
        with warnings.catch_warnings():
            warnings.simplefilter("error", OnestepWarning)
            loads(text)
