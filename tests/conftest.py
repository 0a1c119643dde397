"""Shared fixtures: a small analytic-teacher config and its fitted teacher (fitted once)."""

import os

import pytest
import torch

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


SMALL_GMM = {
    "teacher": {
        "kind": "gmm",
        "means": [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [0.0, 0.0]],
        "stds": [0.1] * 5,
        "weights": [0.35, 0.25, 0.2, 0.12, 0.08],
    },
    "network": {"hidden": 64, "depth": 3, "fit_steps": 300, "fit_batch": 256, "fit_lr": 2e-3},
    "train": {"steps": 20, "batch_size": 64, "lr_generator": 3e-4, "lr_fake": 1e-3,
              "checkpoint_every": 10, "log_every": 5, "progress": False},
}


def small_config(**overrides):
    import copy

    from onestep import config as config_mod

    data = copy.deepcopy(SMALL_GMM)
    config_mod.apply_overrides(data, [f"{k}={v}" for k, v in overrides.items()])
    return config_mod.from_dict(data)


@pytest.fixture(scope="session")
def small_teacher():
    from onestep.teacher import load_teacher

    return load_teacher(small_config(), run_dir=None, progress=False)
