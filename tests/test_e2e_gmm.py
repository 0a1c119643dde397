"""End to end on the analytic mixture: every objective (and f) learns the distribution.

Budget: 300 iterations at batch 128 from the teacher-initialised generator, whose MMD is
0.58. Measured over seeds 0, 1, 2 (this config, 2-core CPU, torch's per-tensor Adam): MMD 0.017-0.052 for every
variant but one, every mode found by every variant (mass/weight >= 0.37). Threshold 0.08
leaves ~1.5x over the worst of those; a collapse or divergence (MMD > 0.1) fails.

uni_instruct with Neyman chi^2 (h = 2/r) weights each sample by 1/r, so the head's error
where the teacher has little mass dominates its gradient: measured MMD 0.035-0.14 over the
same seeds. Its threshold (0.25) only catches a collapse; docs/objectives.md documents the instability.

uni_instruct with JS is seed-sensitive at this short budget: with the fused Adam kernel,
seed 0 blew up at iteration ~270 (generator gradient norm 0.4 -> 4.7, MMD 0.15, 91% of
samples between modes) while seeds 1-3 reached 0.029-0.032. It is tested over seeds 0, 1, 2:
the median must pass the common threshold and at least two runs must find every mode.
(Re-measured with the ratio gradient from the discriminator, the default since issue 20: seeds
0, 1, 2 at 0.024 / 0.034 / 0.027, the exact score form at 0.028 / 0.029 / 0.033.)
"""

import pytest
import torch
from conftest import small_config

from onestep.build import build_trainer
from onestep.core.samplers import generate
from onestep.evaluation.gmm_metrics import evaluate_samples
from onestep.objectives import F_NAMES
from onestep.teachers.gmm import GaussianMixture

MMD_MAX = 0.08
MMD_MAX_UNSTABLE = {("uni_instruct", "neyman"): 0.25}
SEED_SENSITIVE = {("uni_instruct", "js")}
MODE_COVERING = ("fkl", "js", "jeffreys")
VARIANTS = [("diff_instruct", None), ("dmd", None), ("sid", None), ("sida", None), ("sim", None)]
VARIANTS += [(family, f) for family in ("f_distill", "uni_instruct") for f in F_NAMES]


@pytest.fixture(scope="module")
def budget():
    return {"train.steps": 300, "train.batch_size": 128, "train.fake_steps_per_gen": 2,
            "objective.ratio_warmup": 100}


def _learn(tmp_path, teacher, overrides: dict, seed: int) -> tuple[dict, torch.Tensor]:
    """Distil with ``overrides`` and ``train.seed``; returns (evaluate_samples result, mass/weight)."""
    cfg = small_config(**{**overrides, "train.seed": seed})
    trainer = build_trainer(cfg, tmp_path / f"seed{seed}", teacher=teacher)
    trainer.fit()
    assert trainer.nonfinite_total == 0
    gmm = GaussianMixture(cfg.teacher.means, cfg.teacher.stds, cfg.teacher.weights)
    x = generate(trainer.method.nets.plain_generator, 2000, 1, (2,))
    result = evaluate_samples(x, gmm)
    return result, torch.tensor(result["mass"]) / gmm.weights


@pytest.mark.parametrize("name,f", VARIANTS, ids=[f"{n}-{f}" if f else n for n, f in VARIANTS])
def test_objective_learns_the_mixture(tmp_path, small_teacher, budget, name, f):
    overrides = {**budget, "objective.name": name}
    if f:
        overrides["objective.f"] = f
    if name == "sida":
        overrides["gan.weight"] = 0.01
    if (name, f) in SEED_SENSITIVE:
        runs = [_learn(tmp_path, small_teacher, overrides, seed) for seed in (0, 1, 2)]
        mmds = sorted(r["mmd"] for r, _ in runs)
        assert mmds[1] < MMD_MAX, [r for r, _ in runs]
        assert sum(bool(torch.all(found > 0.4)) for _, found in runs) >= 2, [r for r, _ in runs]
        return
    result, found = _learn(tmp_path, small_teacher, overrides, 0)
    assert result["mmd"] < MMD_MAX_UNSTABLE.get((name, f), MMD_MAX), result
    if f in MODE_COVERING:
        assert torch.all(found > 0.4), f"a mode was dropped: mass/weight = {found.tolist()}"


@pytest.mark.parametrize("name", ["f_distill", "uni_instruct"])
@pytest.mark.parametrize("f", MODE_COVERING)
def test_mode_covering_f_find_every_mode_over_three_seeds(tmp_path, small_teacher, name, f):
    """150 iterations from the teacher-initialised generator, whose samples all lie between the
    modes (mass/weight 0 at every mode). Measured over seeds 0, 1, 2: every mode at mass/weight
    0.51-0.60 (the worst mode of each run), MMD 0.024-0.036; threshold 0.4 per mode."""
    overrides = {"train.steps": 150, "train.batch_size": 128, "train.fake_steps_per_gen": 2,
                 "objective.ratio_warmup": 50, "objective.name": name, "objective.f": f}
    for seed in (0, 1, 2):
        result, found = _learn(tmp_path, small_teacher, overrides, seed)
        assert torch.all(found > 0.4), f"seed {seed}: a mode was dropped: mass/weight = {found.tolist()}"
        assert result["mmd"] < MMD_MAX, (seed, result)
