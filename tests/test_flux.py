"""Flux teachers (issue 23, item 3): a tiny FluxPipeline built from configs (Flux transformer,
CLIP + T5, flow matching with the resolution-dependent shift, the guidance embedding) distills,
exports and reloads; its EDM-form denoiser is what FluxPipeline computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from _tiny import save_flux_pipeline

from onestep import config as config_mod
from onestep.build import build_teacher
from onestep.cli import main
from onestep.portable.pipeline import OneStepPipeline

GUIDANCE, RESOLUTION = 3.5, 16


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    (root / "prompts.txt").write_text("a red square\na blue circle\n")
    return save_flux_pipeline(root / "teacher"), str(root / "prompts.txt")


def _teacher_keys(path, prompts, **extra):
    return {"kind": "diffusers", "path": path, "prompts": prompts, "guidance_scale": GUIDANCE,
            "resolution": RESOLUTION, **extra}


def test_the_denoiser_is_what_flux_pipeline_computes(flux):
    """D(x, sigma) against FluxPipeline's own pieces: packing, rotary ids, time / 1000, the guidance
    input, and the flow step x0 = x_t - t v."""
    from diffusers import FluxPipeline

    path, prompts = flux
    teacher = build_teacher(config_mod.from_dict({"teacher": _teacher_keys(path, prompts)}))
    net = teacher.network
    assert net.sample_shape == (4, 8, 8) and net.guidance == GUIDANCE and teacher.guidance_scale == 1.0
    pipe = FluxPipeline.from_pretrained(path)
    pe, pooled, text_ids = pipe.encode_prompt(["a red square", "a blue circle"], None, max_sequence_length=16)
    cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
    torch.testing.assert_close(teacher.prompt_cond["encoder_hidden_states"], pe)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.8])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        v = pipe.transformer(hidden_states=pipe._pack_latents(x_t, 2, 4, 8, 8), timestep=t,
                             guidance=torch.full((2,), GUIDANCE), pooled_projections=pooled,
                             encoder_hidden_states=pe, txt_ids=text_ids,
                             img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)).sample
        expected = x_t - t.view(-1, 1, 1, 1) * pipe._unpack_latents(v, 16, 16, pipe.vae_scale_factor)
        sigma = t / (1 - t)
        got = net(x_t * (1 + sigma).view(-1, 1, 1, 1), sigma, cond)  # EDM form: x = x_t / (1 - t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _run(tmp_path, flux, lora=False, steps=2):
    path, prompts = flux
    cfg = tmp_path / "cfg.yaml"
    data = {"teacher": _teacher_keys(path, prompts), "generator": {"sigma_init": 999.0},
            "objective": {"name": "sid"},
            "train": {"steps": steps, "batch_size": 2, "checkpoint_every": steps, "progress": False}}
    if lora:
        data["generator"]["lora"] = {"rank": 4}
        data["fake_score"] = {"lora": {"rank": 4}}
    cfg.write_text(yaml.safe_dump(data))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_flux_distills_exports_and_reloads_both_ways(tmp_path, flux, lora, monkeypatch):
    from diffusers import DiffusionPipeline

    run = _run(tmp_path, flux, lora)
    npy = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run), "--num-samples", "2", "--seed", "4", "--output", str(npy)]) == 0
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "pipe")]) == 0
    scheduler = (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text()
    assert f'"guidance": {GUIDANCE}' in scheduler and '"sample_size": 8' in scheduler
    ours = OneStepPipeline.from_pretrained(tmp_path / "pipe")
    prompts = ["a red square", "a blue circle"]  # `onestep sample` cycles over the run's prompts
    got = ours(prompt=prompts, generator=OneStepPipeline.index_generators(4, 2), output_type="latent").images
    # exact for full weights; a LoRA export's merged weights W + s B A round differently from the adapter
    np.testing.assert_allclose(got.numpy(), np.load(npy), atol=1e-5 if lora else 0, rtol=0)
    monkeypatch.setitem(__import__("sys").modules, "onestep", None)  # plain diffusers, no onestep
    remote = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    again = remote(prompt=prompts, generator=OneStepPipeline.index_generators(4, 2), output_type="latent").images
    np.testing.assert_array_equal(again.numpy(), got.numpy())
    images = remote(prompt="a cat", output_type="np").images
    assert images.shape == (1, RESOLUTION, RESOLUTION, 3)


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_flux_pipeline_without_t5_is_refused(tmp_path, capsys):
    path = save_flux_pipeline(tmp_path / "t", with_t5=False)
    (tmp_path / "p.txt").write_text("a cat\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": _teacher_keys(path, str(tmp_path / "p.txt")),
                                   "train": {"steps": 1, "batch_size": 2, "progress": False}}))
    capsys.readouterr()
    for extra in ([], ["--dry-run"]):
        out = main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run"), *extra])
        text = capsys.readouterr()
        line = text.err.strip() or [x for x in text.out.splitlines() if "unavailable" in x][0]
        assert "needs its T5 encoder" in line, line
        assert out == (2 if not extra else 0) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,fragment", [
    ({"resolution": 18}, "not a multiple of 4"),
    ({"guidance_scale": 2.0}, "no guidance embedding"),
])
def test_bad_flux_settings_are_one_line(tmp_path, capsys, extra, fragment):
    path = save_flux_pipeline(tmp_path / "t", guidance_embeds="guidance_scale" not in extra)
    (tmp_path / "p.txt").write_text("a cat\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": _teacher_keys(path, str(tmp_path / "p.txt"), **extra),
                                   "train": {"steps": 1, "batch_size": 2, "progress": False}}))
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 2
    assert fragment in _one_line(capsys)


def test_resolution_is_refused_for_a_network_of_fixed_size(tmp_path, capsys):
    from _tiny import save_latent_pipeline

    path = save_latent_pipeline(tmp_path / "t")
    (tmp_path / "p.txt").write_text("a cat\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": path, "prompts": str(tmp_path / "p.txt"),
                                               "resolution": 64},
                                   "train": {"steps": 1, "batch_size": 2, "progress": False}}))
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 2
    assert "has a fixed sample size" in _one_line(capsys)


def test_flux_dev_config_estimates_full_lora_and_fsdp(tmp_path):
    """configs/flux-dev.yaml at the published FLUX.1-dev architecture (config-only skeleton)."""
    import importlib.util
    from pathlib import Path

    from onestep.train import memory

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("memory_estimate", root / "eval" / "memory_estimate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    path = script.write_skeleton(tmp_path / "flux-dev", script.PIPELINES["flux-dev"])
    base = [f"teacher.path={path}", "generator.lora.rank=null", "fake_score.lora.rank=null"]  # full copies
    full1 = memory.estimate(config_mod.load(root / "configs" / "flux-dev.yaml", base), 1)
    assert 11.8e9 < full1.denoiser_params < 12.0e9  # FLUX.1-dev: 12B (model card)
    fsdp8 = memory.estimate(config_mod.load(root / "configs" / "flux-dev.yaml", base + ["train.sharding=fsdp"]), 8)
    lora = ["generator.lora.rank=64", "fake_score.lora.rank=64"]
    lora1 = memory.estimate(config_mod.load(root / "configs" / "flux-dev.yaml", base + lora), 1)
    assert lora1.total < full1.total and fsdp8.total < full1.total
    rows = dict(lora1.rows)
    assert rows["generator LoRA + fake score LoRA (fp32)"] < 0.05 * dict(full1.rows)["generator + fake score (fp32)"]
