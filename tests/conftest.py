"""Shared fixtures: a small analytic-teacher config and its fitted teacher (fitted once)."""

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]
# The shipped mixture (configs/gmm.yaml) with a smaller network and budget for tests.
SMALL_GMM = yaml.safe_load((ROOT / "configs" / "gmm.yaml").read_text())
SMALL_GMM["network"] = {"hidden": 64, "depth": 3, "fit_steps": 600, "fit_batch": 256, "fit_lr": 2e-3}
SMALL_GMM["train"] = {**SMALL_GMM["train"], "steps": 20, "batch_size": 64, "checkpoint_every": 10,
                      "log_every": 5, "progress": False}


def small_config(**overrides):
    import copy

    from onestep import config as config_mod

    data = copy.deepcopy(SMALL_GMM)
    config_mod.apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    return config_mod.from_dict(data)


@pytest.fixture(scope="session")
def small_teacher():
    from onestep.build import build_teacher as load_teacher

    return load_teacher(small_config(), run_dir=None, progress=False)
