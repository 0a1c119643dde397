"""The memory estimate of ``onestep distill --dry-run``: parameter counts of the weightless
skeleton equal the loaded teacher's, the activations measured on the meta device equal what
autograd saves on real tensors, and the trained states it predicts equal a real checkpoint's."""

import pytest
import torch
import yaml
from _tiny import (
    save_dit_pipeline,
    save_flux_pipeline,
    save_latent_pipeline,
    save_pixart_pipeline,
    save_sd3_pipeline,
    save_sdxl_pipeline,
)
from safetensors.torch import load_file

from onestep import config as config_mod
from onestep.build import build_teacher
from onestep.cli import main
from onestep.core.rundir import latest_checkpoint
from onestep.train import memory

BUILDERS = {"latent": save_latent_pipeline, "dit": save_dit_pipeline, "sd3": save_sd3_pipeline,
            "sdxl": save_sdxl_pipeline, "pixart": save_pixart_pipeline, "flux": save_flux_pipeline}
EXTRA = {"flux": {"resolution": 16, "guidance_scale": 3.5}}  # Flux has no fixed size; its guidance is an input


def _config(path, prompts, teacher=None, **train):
    return config_mod.from_dict({"teacher": {"kind": "diffusers", "path": str(path), "prompts": prompts, **(teacher or {})},
                                 "train": {"batch_size": 4, "progress": False, **train}})


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    (root / "prompts.txt").write_text("a red square\n")
    return {k: build(root / k) for k, build in BUILDERS.items()}, str(root / "prompts.txt")


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_skeleton_counts_and_activations_match_the_real_teacher(kind, pipelines):
    paths, prompts = pipelines
    cfg = _config(paths[kind], prompts, EXTRA.get(kind))
    network, aux_bytes = memory.skeleton(cfg)
    assert all(p.is_meta for p in network.parameters())
    teacher = build_teacher(cfg, progress=False)
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for p in teacher.network.parameters())
    aux = sum(p.numel() for m in [teacher.vae, *teacher.text_parts.values()] if isinstance(m, torch.nn.Module)
              for p in m.parameters())
    assert aux_bytes == 4 * aux > 0

    # the meta forward saves what a real forward saves (same shapes, same ops)
    from onestep.portable.edm_form import call_unet

    real = teacher.network.requires_grad_(True)
    saved = memory._SavedTensors(real.parameters())
    cond = memory._dummy_cond(real.unet, 2)
    cond = {k: torch.zeros_like(v, device="cpu") for k, v in cond.items()} if isinstance(cond, dict) else (
        None if cond is None else torch.zeros_like(cond, device="cpu"))

    def run():
        x = torch.randn(2, *real.sample_shape, requires_grad=True)
        call_unet(real.unet, x, torch.full((2,), 500.0), cond)
    on_meta, on_cpu = memory.activation_bytes(network, 2, checkpointing=False)[0], saved.measure(run)[0]
    assert on_cpu > 0 and on_meta == pytest.approx(on_cpu, rel=1e-3)
    # linear in the batch; checkpointing keeps less
    full2, full4 = (memory.activation_bytes(network, b, False)[0] for b in (2, 4))
    assert full4 == pytest.approx(2 * full2, rel=0.02)
    if getattr(network.unet, "_supports_gradient_checkpointing", False):
        kept, region = memory.activation_bytes(network, 4, True)
        assert 0 < region and kept + region < full4


def test_fused_attention_keeps_no_score_matrix():
    """One attention call: the fused count is q, k, v, output and the log-sum-exp."""
    b, h, n, d = 2, 4, 64, 8

    def run():
        q, k, v = (torch.empty(b, h, n, d, device="meta", requires_grad=True) for _ in range(3))
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert memory._SavedTensors([]).measure(run)[0] == 4 * (4 * b * h * n * d + b * h * n)


def test_predicted_states_equal_a_real_checkpoint(tmp_path, pipelines):
    """Weights, EMA and Adam moments of a real 1-step run are the bytes the estimate names."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "teacher": {"kind": "diffusers", "path": pipelines[0]["dit"]}, "objective": {"name": "dmd"},
        "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "progress": False, "sample_every": 0,
                  "ema_halflife_kimg": 0.01}}))
    assert main(["distill", "--config", str(cfg_path), "--output", str(tmp_path / "run")]) == 0
    tensors = load_file(str(latest_checkpoint(tmp_path / "run")))

    def total(prefixes, suffixes=("",)):
        return sum(v.numel() * v.element_size() for k, v in tensors.items()
                   if k.startswith(prefixes) and k.endswith(suffixes) and v.is_floating_point())
    rows = dict(memory.estimate(config_mod.load(cfg_path), 1).rows)
    assert rows["generator + fake score (fp32)"] == total(("generator.", "fake_score."))
    assert rows["EMA (fp32)"] == total(("ema.",))
    assert rows["Adam moments (2 x fp32)"] == total(("opt_generator.", "opt_fake."), ("exp_avg", "exp_avg_sq"))


def test_dry_run_prints_the_table_and_fsdp_divides_the_trained_states(pipelines, capsys):
    path = pipelines[0]["sdxl"]
    assert main(["distill", "--config", "configs/sdxl-dmd2.yaml", "--output", "unused", "--dry-run",
                 "--set", f"teacher.path={path}", "--set", "train.batch_size=8", "--processes", "4"]) == 0
    out = capsys.readouterr().out
    config_mod.from_dict(yaml.safe_load(out))  # still a valid config: the table is YAML comments
    assert "# memory per GPU (estimate; 4 process(es), 2 samples each" in out
    cfg = config_mod.load("configs/sdxl-dmd2.yaml", [f"teacher.path={path}", "train.batch_size=8"])
    one, four = memory.estimate(cfg, 1), memory.estimate(cfg, 4)
    assert dict(four.rows)["Adam moments (2 x fp32 / 4)"] == pytest.approx(dict(one.rows)["Adam moments (2 x fp32)"] / 4)
    act = [v for k, v in four.rows if k.startswith("activations")][0]
    assert act == pytest.approx([v for k, v in one.rows if k.startswith("activations")][0] / 4, rel=0.05)
    assert four.total < one.total
    cfg.train.sharding = "none"
    assert "Adam moments (2 x fp32)" in dict(memory.estimate(cfg, 4).rows)


def test_dry_run_without_a_local_teacher_says_why(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["distill", "--config", "configs/sd3-medium.yaml", "--output", "unused", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# memory estimate unavailable: teacher.path 'stabilityai/stable-diffusion-3-medium-diffusers' is not a " \
           "local directory nor in the Hugging Face cache (nothing is downloaded for an estimate)" in out
    assert main(["distill", "--config", "configs/gmm.yaml", "--output", "unused", "--dry-run", "--processes", "0"]) == 2


def _graphs(cfg, local):
    """The plan's graph batches as the estimate reads them (two teacher passes under guidance)."""
    from onestep.distill.plan import Plan

    guided = 2 if cfg.teacher.guidance_scale != 1.0 else 1
    return Plan.from_config(cfg).graph_batches(local, cfg.train.batch_size, guided)


def test_the_peak_counts_the_graphs_each_objective_holds():
    from conftest import small_config

    # sid: generator (+ its regression pairs), teacher (guided: both halves) and fake score
    cfg = small_config(**{"objective.name": "sid", "teacher.guidance_scale": 2.0, "regression.weight": 1.0,
                          "regression.batch_size": 16, "train.batch_size": 64})
    assert _graphs(cfg, 32) == [32 + 8, 64, 32]
    # dmd: no gradient through either score; DMD2's discriminator (independent noise): three batches
    cfg = small_config(**{"objective.name": "dmd", "gan.weight": 0.01})
    assert _graphs(cfg, 16) == [48]
    assert _graphs(small_config(**{"objective.name": "dmd"}), 16) == [16]
    # shared noise at the fake score's sigmas: the denoising pass carries the reals too (SiDA's
    # design); its generator step (three networks, GAN term read from the same pass) is larger
    assert _graphs(small_config(**{"objective.name": "sida"}), 16) == [16, 16, 16]
    monitor = {"objective.name": "diff_instruct", "discriminator.monitor": "true"}
    assert _graphs(small_config(**monitor), 16) == [32]
    assert _graphs(small_config(**monitor, **{"discriminator.noise": "independent"}), 16) == [48]
