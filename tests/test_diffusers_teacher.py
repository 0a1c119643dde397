"""diffusers teachers: the EDM-form conversion matches each scheduler, sigma <-> t round trips,
tiny teachers distill, and unsupported teachers are refused in one line."""

import pytest
import torch
from _tiny import pixel_unet, save_latent_pipeline, save_pixel_pipeline
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

from onestep import config as config_mod
from onestep.errors import OnestepError
from onestep.nets.diffusers_unet import DiffusersDenoiser, parameterization_of

# Measured max |D - pred_original_sample|: <= 1.2e-6 in general; up to 1.1e-4 for epsilon
# prediction at t=999 (float32 cancellation in x - sigma eps at sigma=157).
ATOL = {"epsilon": 3e-4, "v_prediction": 1e-5, "sample": 1e-5}


def _vp_case(scheduler, t):
    """x_vp at integer timestep t, and the same point in EDM form."""
    abar = scheduler.alphas_cumprod[t].double()
    sigma = ((1 - abar) / abar).sqrt()
    x_vp = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(t))
    return x_vp, x_vp.double() * (1 + sigma**2).sqrt(), sigma


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_vp_denoiser_matches_pred_original_sample(cls, prediction):
    sched = cls(prediction_type=prediction, clip_sample=False)
    if cls is DDIMScheduler:
        sched.set_timesteps(10)
        timesteps = [int(v) for v in sched.timesteps]
    else:  # DDPM without set_timesteps accepts any training timestep
        timesteps = [0, 1, 10, 500, 998, 999]
    unet = pixel_unet()
    D = DiffusersDenoiser(unet, parameterization_of(sched))
    for t in timesteps:
        x_vp, x_ve, sigma = _vp_case(sched, t)
        with torch.no_grad():
            out = unet(x_vp, t).sample
            ref = sched.step(out, t, x_vp).pred_original_sample
            ours = D(x_ve.float(), sigma.float().expand(2))
        torch.testing.assert_close(ours, ref, atol=ATOL[prediction], rtol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_euler_discrete_matches_pred_original_sample(prediction):
    sched = EulerDiscreteScheduler(prediction_type=prediction)
    sched.set_timesteps(10)
    unet = pixel_unet()
    D = DiffusersDenoiser(unet, parameterization_of(sched))
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i]
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) * (sigma**2 + 1).sqrt()
        sched._step_index = None
        with torch.no_grad():
            out = unet(sched.scale_model_input(x, t), t).sample
            ref = sched.step(out, t, x).pred_original_sample
            ours = D(x, sigma.expand(2))
        torch.testing.assert_close(ours, ref, atol=ATOL[prediction], rtol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_euler_matches_pred_original_sample(prediction):
    sched = EDMEulerScheduler(prediction_type=prediction, sigma_data=0.5)
    sched.set_timesteps(10)
    unet = pixel_unet()
    D = DiffusersDenoiser(unet, parameterization_of(sched))
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i]
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) * (sigma**2 + 0.25).sqrt()
        sched._step_index = None
        with torch.no_grad():
            out = unet(sched.precondition_inputs(x, sigma), t.expand(2)).sample
            ref = sched.step(out, t, x).pred_original_sample
            ours = D(x, sigma.expand(2))
        torch.testing.assert_close(ours, ref, atol=ATOL[prediction], rtol=1e-5)


def test_sigma_timestep_round_trip():
    sched = DDPMScheduler()
    D = DiffusersDenoiser(pixel_unet(), parameterization_of(sched))
    t = torch.tensor([0.0, 0.5, 17.25, 500.0, 928.7, 999.0])
    torch.testing.assert_close(D.sigma_to_t(D.t_to_sigma(t)), t, atol=2e-3, rtol=0)
    abar = sched.alphas_cumprod
    exact = ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(D.sigma_to_t(exact[[0, 10, 500, 999]]), torch.tensor([0.0, 10, 500, 999]), atol=1e-3, rtol=0)
    # for DDPM's linear schedule sigma=80 lies at t=929.62 (checked against diffusers)
    assert abs(float(D.sigma_to_t(torch.tensor([80.0]))) - 929.62) < 0.01
    lo, hi = D.sigma_range
    assert abs(lo - 0.0100) < 1e-4 and abs(hi - 157.41) < 0.01
    edm = DiffusersDenoiser(pixel_unet(), parameterization_of(EDMEulerScheduler()))
    s = torch.tensor([0.002, 0.5, 80.0])
    torch.testing.assert_close(edm.t_to_sigma(edm.sigma_to_t(s)), s, rtol=1e-5, atol=0)


def test_timestep_is_passed_fractional():
    """UNet2DModel truncates a Python float timestep; a float tensor keeps the fraction."""
    D = DiffusersDenoiser(pixel_unet(), parameterization_of(DDPMScheduler()))
    x = torch.randn(1, 3, 8, 8)
    a = D(x, D.t_to_sigma(torch.tensor([500.0])))
    b = D(x, D.t_to_sigma(torch.tensor([500.5])))
    assert not torch.allclose(a, b)


def test_unsupported_scheduler_and_prediction_are_refused():
    with pytest.raises(OnestepError, match="unsupported scheduler PNDMScheduler"):
        parameterization_of(PNDMScheduler())
    with pytest.raises(OnestepError, match="unsupported prediction_type 'flux' of DDPMScheduler"):
        parameterization_of(DDPMScheduler(prediction_type="flux"))


def test_loader_errors_name_the_problem(tmp_path):
    from onestep.teachers.diffusers import load_components

    with pytest.raises(OnestepError, match="does not exist"):
        load_components(str(tmp_path / "nowhere"))
    path = save_pixel_pipeline(tmp_path / "pndm", PNDMScheduler())
    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": path}})
    from onestep.build import build_teacher as load_teacher

    with pytest.raises(OnestepError, match="unsupported scheduler PNDMScheduler"):
        load_teacher(cfg)


def _distill(tmp_path, teacher_path, **teacher):
    from onestep.build import build_teacher as load_teacher
    from onestep.build import build_trainer

    data = {
        "teacher": {"kind": "diffusers", "path": teacher_path, **teacher},
        "objective": {"name": "f_distill", "f": "js", "ratio_warmup": 1},
        "gan": {"weight": 0.01},
        "discriminator": {"features": "teacher"},
        "regression": {"weight": 1.0, "batch_size": 2},
        "data": {"cache_size": 8, "cache_steps": 2, "cache_batch": 8},
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 3, "progress": False},
    }
    cfg = config_mod.from_dict(data)
    teacher_model = load_teacher(cfg, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in teacher_model.network.state_dict().items()}
    trainer = build_trainer(cfg, tmp_path / "run", teacher=teacher_model)
    trainer.fit()
    import json

    rows = [json.loads(x) for x in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("loss_g", "loss_f", "loss_disc", "loss_gan", "loss_reg"):
            assert torch.isfinite(torch.tensor(r[key])), (key, r)
    after = teacher_model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "run" / "teacher_cache.safetensors").is_file()
    assert trainer.method.real.source is trainer.method.pairs  # one cache: the discriminator's real side (90%) and the pairs
    return trainer


def test_distill_pixel_unconditional(tmp_path):
    path = save_pixel_pipeline(tmp_path / "t", DDPMScheduler())
    trainer = _distill(tmp_path, path)
    assert trainer.teacher.cond_kind == "none"


def test_distill_pixel_class_conditional(tmp_path):
    path = save_pixel_pipeline(tmp_path / "t", EDMEulerScheduler(), num_class_embeds=10)
    trainer = _distill(tmp_path, path)
    assert trainer.teacher.cond_kind == "class" and trainer.teacher.num_classes == 10


def test_distill_latent_text_conditional(tmp_path):
    path = save_latent_pipeline(tmp_path / "t")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n\na green cat\n")
    trainer = _distill(tmp_path, path, prompts=str(prompts), guidance_scale=3.0)
    t = trainer.teacher
    assert t.cond_kind == "text" and len(t.prompts) == 3 and t.sample_shape == (4, 8, 8)
    # guidance changes the teacher's denoiser; the generator copy is guidance-free
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 1.0])
    cond = t.prompt_embeds[:2]
    guided = t(x, sigma, cond)
    plain = t.network(x, sigma, cond)
    assert not torch.allclose(guided, plain)
    assert t.decode(x).shape == (2, 3, 16, 16)


def test_text_teacher_without_prompts_is_refused(tmp_path):
    from onestep.build import build_teacher as load_teacher

    path = save_latent_pipeline(tmp_path / "t")
    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": path}})
    with pytest.raises(OnestepError, match="needs a prompts file"):
        load_teacher(cfg)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    """sid backpropagates through teacher and fake score: with activation checkpointing in all
    three UNets the generator's gradients are unchanged."""
    from onestep.build import build_trainer

    path = save_pixel_pipeline(tmp_path / "t", DDPMScheduler())
    grads = []
    for ckpt in (False, True):
        cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": path}, "objective": {"name": "sid"},
                                    "train": {"steps": 1, "batch_size": 4, "progress": False,
                                              "gradient_checkpointing": ckpt, "grad_clip": 0.0}})
        tr = build_trainer(cfg, tmp_path / f"run{ckpt}")
        assert tr.method.nets.plain_generator.network.unet.is_gradient_checkpointing == ckpt
        assert tr.teacher.network.unet.is_gradient_checkpointing == ckpt
        opt = tr.opt_generator
        opt.step = lambda *a, **k: None  # keep the gradients for inspection
        opt.zero_grad = lambda *a, **k: None
        tr.generator_step()
        grads.append([p.grad.clone() for p in tr.generator.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
