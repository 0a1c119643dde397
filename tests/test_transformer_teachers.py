"""Transformer and flow-matching teachers (DiT, SD3, PixArt) and SDXL: the EDM-form conversion is
exact, a short distillation of each kind runs with finite losses and leaves the teacher unchanged,
and its export reloads both ways with the images `onestep sample` makes."""

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml
from _tiny import save_dit_pipeline, save_pixart_pipeline, save_sd3_pipeline, save_sdxl_pipeline
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from onestep import OneStepPipeline
from onestep import config as config_mod
from onestep.build import build_teacher
from onestep.cli import main
from onestep.nets.diffusers_unet import DiffusersDenoiser, parameterization_of

BUILDERS = {"dit": save_dit_pipeline, "sd3": save_sd3_pipeline, "sdxl": save_sdxl_pipeline,
            "pixart": save_pixart_pipeline}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    prompts = root / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    return {k: build(root / k) for k, build in BUILDERS.items()}, str(prompts)


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in __import__("pathlib").Path(folder).rglob("*") if p.is_file()):
        h.update(f.read_bytes())
    return h.hexdigest()


def test_flow_matching_with_a_shift_is_exact():
    """x0 = x_t - t v at the shifted scheduler's own timesteps, and sigma <-> t round trips."""
    from _tiny import pixel_unet

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    net = pixel_unet()
    D = DiffusersDenoiser(net, parameterization_of(sched))
    for i in range(1, len(sched.timesteps) - 1):  # (sigma 1 is pure noise: infinite in EDM form)
        t, s, s_next = sched.timesteps[i], float(sched.sigmas[i]), float(sched.sigmas[i + 1])
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            v = net(x, t.expand(2)).sample
            sched._step_index = i
            prev = sched.step(v, t, x).prev_sample
            implied_x0 = x - s * (prev - x) / (s_next - s)
            ours = D(x / (1 - s), torch.full((2,), s / (1 - s)))
        torch.testing.assert_close(ours, implied_x0, atol=2e-4, rtol=1e-4)
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 120.0])
    torch.testing.assert_close(D.t_to_sigma(D.sigma_to_t(sigma)), sigma, rtol=1e-4, atol=1e-6)
    # one Euler step from t = 1 returns x0 = x - v: the flow generator's limit
    sched.set_timesteps(1)
    x = torch.randn(2, 3, 8, 8)
    v = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(sched.step(v, sched.timesteps[0], x).prev_sample, x - v)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_each_kind_distills_exports_and_reloads(kind, teachers, tmp_path, capsys):
    paths, prompts = teachers
    teacher = {"kind": "diffusers", "path": paths[kind], "guidance_scale": 1.5}
    if kind != "dit":
        teacher["prompts"] = prompts
    before = _digest(paths[kind])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "teacher": teacher, "objective": {"name": "sid"}, "gan": {"weight": 0.01},
        "discriminator": {"features": "fake_score", "taps": "encoder"},
        "train": {"steps": 3, "batch_size": 2, "log_every": 1, "checkpoint_every": 3, "progress": False,
                  "sample_every": 0}}))
    run = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--output", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("loss_g", "loss_f", "loss_gan", "loss_disc")), r
    assert _digest(paths[kind]) == before  # the teacher's files are untouched
    pipe_dir = tmp_path / "pipe"
    assert main(["export", "--run", str(run), "--output", str(pipe_dir)]) == 0
    npy = tmp_path / "x.npy"
    sample_args = ["sample", "--run", str(run), "--num-samples", "2", "--output", str(npy)]
    assert main(sample_args + (["--prompt", "a cat"] if kind != "dit" else ["--class-label", "7"])) == 0
    expected = np.load(npy)
    call = {"generator": OneStepPipeline.index_generators(0, 2), "output_type": "latent"}
    call.update({"prompt": "a cat", "num_images_per_prompt": 2} if kind != "dit" else {"class_labels": [7, 7]})
    ours = OneStepPipeline.from_pretrained(pipe_dir)
    assert (ours.transformer is not None) == (kind != "sdxl")
    np.testing.assert_array_equal(ours(**call).images.numpy(), expected)
    call["generator"] = OneStepPipeline.index_generators(0, 2)
    remote = DiffusionPipeline.from_pretrained(pipe_dir, trust_remote_code=True)
    np.testing.assert_array_equal(remote(**call).images.numpy(), expected)
    images = ours(**{**call, "generator": OneStepPipeline.index_generators(0, 2), "output_type": "np"}).images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_guidance_uses_the_null_class_or_the_empty_prompt(teachers):
    paths, prompts = teachers
    for kind in ("dit", "sd3"):
        base = {"kind": "diffusers", "path": paths[kind]}
        if kind == "sd3":
            base["prompts"] = prompts
        plain = build_teacher(config_mod.from_dict({"teacher": base}), progress=False)
        guided = build_teacher(config_mod.from_dict({"teacher": {**base, "guidance_scale": 3.0}}), progress=False)
        x, sigma = torch.randn(2, *plain.sample_shape), torch.tensor([1.0, 2.0])
        cond = plain.sample_cond(2, torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert not torch.allclose(plain(x, sigma, cond), guided(x, sigma, cond))
