"""End to end on the analytic mixture: every objective (and f) learns the distribution.

Budget: 300 iterations at batch 128 from the teacher-initialised generator, whose MMD is
0.58. Measured over seeds 0, 1, 2 (this config, 2-core CPU): MMD 0.017-0.052 for every
variant but one, every mode found by every variant (mass/weight >= 0.37). Threshold 0.08
leaves ~1.5x over the worst of those; a collapse or divergence (MMD > 0.1) fails.

uni_instruct with Neyman chi^2 (h = 2/r) weights each sample by 1/r, so the head's error
where the teacher has little mass dominates its gradient: measured MMD 0.035-0.14 over the
same seeds. Its threshold (0.25) only catches a collapse; README documents the instability.
"""

import pytest
import torch
from conftest import small_config

from onestep.objectives import F_NAMES
from onestep.sampling import generate
from onestep.toy import GaussianMixture, evaluate_samples
from onestep.trainer import Trainer

MMD_MAX = 0.08
MMD_MAX_UNSTABLE = {("uni_instruct", "neyman"): 0.25}
MODE_COVERING = ("fkl", "js", "jeffreys")
VARIANTS = [("diff_instruct", None), ("dmd", None), ("sid", None), ("sida", None), ("sim", None)]
VARIANTS += [(family, f) for family in ("f_distill", "uni_instruct") for f in F_NAMES]


@pytest.fixture(scope="module")
def budget():
    return {"train.steps": 300, "train.batch_size": 128, "train.fake_steps_per_gen": 2,
            "objective.ratio_warmup": 100}


@pytest.mark.parametrize("name,f", VARIANTS, ids=[f"{n}-{f}" if f else n for n, f in VARIANTS])
def test_objective_learns_the_mixture(tmp_path, small_teacher, budget, name, f):
    overrides = {**budget, "objective.name": name}
    if f:
        overrides["objective.f"] = f
    if name == "sida":
        overrides["gan.weight"] = 0.01
    cfg = small_config(**overrides)
    trainer = Trainer(cfg, tmp_path, teacher=small_teacher)
    trainer.fit()
    assert trainer.nonfinite_total == 0
    gmm = GaussianMixture(cfg.teacher.means, cfg.teacher.stds, cfg.teacher.weights)
    x = generate(trainer.acc.unwrap_model(trainer.generator), 2000, 1, (2,))
    result = evaluate_samples(x, gmm)
    assert result["mmd"] < MMD_MAX_UNSTABLE.get((name, f), MMD_MAX), result
    if f in MODE_COVERING:
        found = torch.tensor(result["mass"]) / gmm.weights
        assert torch.all(found > 0.4), f"a mode was dropped: mass/weight = {found.tolist()}"
