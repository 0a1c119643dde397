"""``onestep export --lora`` (issue 23, item 2): the generator's adapter as a diffusers LoRA that
the base pipeline's ``load_lora_weights`` takes; with the recipe in ``onestep_lora.json`` the stock
pipeline computes the same images as the merged full export, on the SD, SDXL and SD3 layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from _tiny import (
    save_flux_pipeline,
    save_latent_pipeline,
    save_pixel_pipeline,
    save_sd3_pipeline,
    save_sdxl_pipeline,
)

from onestep.cli import main
from onestep.portable.pipeline import OneStepPipeline

LAYOUTS = {"sd": (save_latent_pipeline, "StableDiffusionPipeline"),
           "sdxl": (save_sdxl_pipeline, "StableDiffusionXLPipeline"),
           "sd3": (save_sd3_pipeline, "StableDiffusion3Pipeline"),
           "flux": (save_flux_pipeline, "FluxPipeline")}
TEACHER = {"flux": {"resolution": 16, "guidance_scale": 3.5}}


def _last_sigma(teacher: str) -> float:
    """The generator's sigma_init at the teacher's last timestep (VP table end; flow t = 0.999)."""
    import diffusers

    index = json.loads((__import__("pathlib").Path(teacher) / "scheduler" / "scheduler_config.json").read_text())
    sched = getattr(diffusers, index["_class_name"]).from_pretrained(teacher, subfolder="scheduler")
    if index["_class_name"] == "FlowMatchEulerDiscreteScheduler":
        return 999.0
    abar = sched.alphas_cumprod[-1].double()
    return float(((1 - abar) / abar).sqrt())


def _lora_run(tmp_path, teacher, steps=2, **teacher_keys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "teacher": {"kind": "diffusers", "path": teacher, "prompts": str(prompts), **teacher_keys},
        "generator": {"sigma_init": _last_sigma(teacher), "lora": {"rank": 4, "alpha": 2.0}},
        "fake_score": {"lora": {"rank": 4}}, "objective": {"name": "dmd"},
        "train": {"steps": steps, "batch_size": 2, "checkpoint_every": steps, "progress": False,
                  "lr_generator": 1e-2}}))
    run = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--output", str(run)]) == 0
    return run


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_lora_export_loads_onto_the_base_and_equals_the_merged_export(tmp_path, layout, capsys):
    import diffusers

    build, base_name = LAYOUTS[layout]
    teacher = build(tmp_path / "teacher")
    run = _lora_run(tmp_path, teacher, **TEACHER.get(layout, {}))
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "lora"), "--lora"]) == 0
    assert main(["export", "--run", str(run), "--output", str(tmp_path / "merged")]) == 0
    info = json.loads((tmp_path / "lora" / "onestep_lora.json").read_text())
    assert info["base_pipeline"] == base_name and info["rank"] == 4 and info["alpha"] == 2.0
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert base_name in (tmp_path / "lora" / "README.md").read_text()

    base_cls = getattr(diffusers, base_name)
    stock = base_cls.from_pretrained(teacher, **({"text_encoder_3": None, "tokenizer_3": None} if layout == "sd3" else {}))
    stock.load_lora_weights(tmp_path / "lora")
    stock.scheduler = getattr(diffusers, info["scheduler"]).from_pretrained(tmp_path / "lora", subfolder="scheduler")
    ours = OneStepPipeline.from_pretrained(tmp_path / "merged")
    shape = ours._sample_shape(None, None)
    z = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    prompt = ["a cat", "a dog"]
    a = ours(prompt=prompt, latents=z, output_type="np").images
    start = info["latent_scale"] * z
    if layout == "flux":  # FluxPipeline takes its latents packed
        start = stock._pack_latents(start, 2, *shape)
    b = stock(prompt=prompt, latents=start, output_type="np", **info["call"]).images
    diff = float(np.abs(a - b).max())
    print(f"{layout}: max |LoRA-loaded stock - merged export| = {diff:.2e}")
    assert diff < 1e-4
    # the LoRA is not a no-op: the base alone gives other images
    stock.unload_lora_weights()
    c = stock(prompt=prompt, latents=start, output_type="np", **info["call"]).images
    assert np.abs(a - c).max() > 10 * max(diff, 1e-6)


@pytest.fixture(scope="module")
def sd_lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdlora")
    return _lora_run(tmp, save_latent_pipeline(tmp / "teacher"), steps=1)


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_lora_export_of_a_full_run_is_refused(tmp_path, capsys):
    from diffusers import DDPMScheduler

    teacher = save_pixel_pipeline(tmp_path / "t", DDPMScheduler())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": teacher},
                                   "train": {"steps": 1, "batch_size": 2, "progress": False}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(tmp_path / "run"), "--output", str(tmp_path / "out"), "--lora"]) == 2
    assert "trained the full generator" in _one_line(capsys) and not (tmp_path / "out").exists()


def test_lora_export_of_a_family_without_a_lora_loader_is_refused(tmp_path, capsys):
    from diffusers import DDPMScheduler

    teacher = save_pixel_pipeline(tmp_path / "t", DDPMScheduler())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": teacher},
                                   "generator": {"lora": {"rank": 2}},
                                   "train": {"steps": 1, "batch_size": 2, "progress": False}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(tmp_path / "run"), "--output", str(tmp_path / "out"), "--lora"]) == 2
    assert "the teacher is a DDPMPipeline" in _one_line(capsys) and not (tmp_path / "out").exists()


def test_a_lora_export_is_not_a_pipeline_and_overwrites_only_its_kind(tmp_path, capsys, sd_lora_run):
    from onestep.errors import OnestepError
    from onestep.export import load_pipeline

    out = tmp_path / "lora"
    assert main(["export", "--run", str(sd_lora_run), "--output", str(out), "--lora"]) == 0
    with pytest.raises(OnestepError, match="is a LoRA export: load it onto its base pipeline"):
        load_pipeline(out)
    assert main(["export", "--run", str(sd_lora_run), "--output", str(out), "--lora", "--overwrite"]) == 0
    capsys.readouterr()
    # a full export may not replace a LoRA export, nor the reverse
    assert main(["export", "--run", str(sd_lora_run), "--output", str(out), "--overwrite"]) == 2
    assert "not an earlier output (a OneStepLoRA" in _one_line(capsys)
    full = tmp_path / "full"
    assert main(["export", "--run", str(sd_lora_run), "--output", str(full)]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(sd_lora_run), "--output", str(full), "--lora", "--overwrite"]) == 2
    assert "not an earlier output (a OneStepPipeline" in _one_line(capsys)
    assert (full / "model_index.json").is_file()


def test_lora_export_finds_a_hub_id_teachers_cached_snapshot(tmp_path, monkeypatch, sd_lora_run):
    """teacher.path may be a hub id (the shipped configs'): --lora reads its pipeline class from the
    local Hugging Face cache, nothing downloaded."""
    import shutil

    cfg = yaml.safe_load((sd_lora_run / "config.yaml").read_text())
    teacher = cfg["teacher"]["path"]
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--sd" / "snapshots" / "0123abcd"
    shutil.copytree(teacher, snapshot)
    (cache / "models--tiny--sd" / "refs").mkdir()
    (cache / "models--tiny--sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    from onestep.export_lora import base_pipeline

    parsed = __import__("onestep").config.from_dict({**cfg, "teacher": {**cfg["teacher"], "path": "tiny/sd"}},
                                                      stored=True)
    assert base_pipeline(parsed) == "StableDiffusionPipeline"


def test_without_peft_lora_export_says_what_to_install(tmp_path, capsys, monkeypatch, sd_lora_run):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)
    capsys.readouterr()
    assert main(["export", "--run", str(sd_lora_run), "--output", str(tmp_path / "out"), "--lora"]) == 2
    assert "onestep[lora]" in _one_line(capsys) and not (tmp_path / "out").exists()
