"""A discriminator's features-only pass (``return_features="only"``): a diffusers network stops
after its last feature tap, with the same features and the same gradients as the full pass, and
the critic's split pass (denoising rows in full, real rows features-only) trains exactly as the
one batched pass it replaces."""

import pytest
import torch
import yaml
from _tiny import save_dit_pipeline, save_latent_pipeline, save_pixel_pipeline, save_sd3_pipeline
from diffusers import DDPMScheduler, EDMEulerScheduler

from onestep import config as config_mod
from onestep.build import build_teacher, build_trainer

BUILDERS = {
    "unet-class": lambda p: save_pixel_pipeline(p, EDMEulerScheduler(), num_class_embeds=10),
    "unet-text-latent": save_latent_pipeline,
    "dit": save_dit_pipeline,
    "sd3": save_sd3_pipeline,
}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    prompts = root / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    out = {}
    for kind, build in BUILDERS.items():
        teacher = {"kind": "diffusers", "path": build(root / kind)}
        if kind in ("unet-text-latent", "sd3"):
            teacher["prompts"] = str(prompts)
        out[kind] = build_teacher(config_mod.from_dict({"teacher": teacher}), progress=False)
    return out


def _called(net) -> tuple[list[str], list]:
    """(names of the modules a call of ``net`` completes, in order; the hooks' handles)."""
    names, handles = [], []
    for name, module in net.named_modules():
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: names.append(name)))
    return names, handles


@pytest.mark.parametrize("taps", ["mid", "encoder"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_features_only_stops_after_the_last_tap_with_the_same_features_and_gradients(kind, taps, teachers):
    teacher = teachers[kind]
    net = teacher.network
    net.feature_taps = taps
    rng = torch.Generator().manual_seed(0)
    cond = teacher.sample_cond(3, rng)
    x = torch.randn(3, *teacher.sample_shape, generator=rng)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    results = {}
    for mode in (True, "only"):
        x_in = x.clone().requires_grad_(True)
        names, handles = _called(net)
        d, feats = net(x_in, sigma, cond, return_features=mode)
        for h in handles:
            h.remove()
        (grad,) = torch.autograd.grad(sum(f.float().square().mean() for f in feats), x_in)
        results[mode] = d, feats, grad, names
    d_full, feats_full, grad_full, names_full = results[True]
    d_only, feats_only, grad_only, names_only = results["only"]
    assert net.stops_early() and d_full is not None and d_only is None
    assert len(feats_only) == len(feats_full) == (1 if taps == "mid" else len(feats_full))
    for a, b in zip(feats_full, feats_only):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(grad_full, grad_only, rtol=0, atol=0)
    # the features-only call completes a strict prefix of the full call's modules (forward hooks
    # fire as modules complete; the denoiser itself, "", returns last)
    inner = names_only[:-1]
    assert names_only[-1] == "" and inner == names_full[: len(inner)] and len(inner) < len(names_full) - 1
    # and leaves the network as it was: the next full call is the same as the first
    d_again, _ = net(x, sigma, cond, return_features=True)
    torch.testing.assert_close(d_again, d_full.detach(), rtol=0, atol=0)
    net.feature_taps = "mid"


def _two_steps(tmp_path, path, split: bool, monkeypatch):
    """Stats and parameter gradients of a generator step and a fake-score step of a GAN run
    (optimizers held); ``split=False`` forces the critic's one batched pass."""
    from onestep.nets.fake_score import FakeScore

    modes, forward = [], FakeScore.forward

    def recording(self, *args, return_features=False):
        modes.append(return_features)
        return forward(self, *args, return_features=return_features)

    monkeypatch.setattr(FakeScore, "forward", recording)
    if not split:
        monkeypatch.setattr(FakeScore, "stops_early", lambda self: False)
    cfg = config_mod.from_dict(yaml.safe_load(f"""
teacher: {{kind: diffusers, path: {path}}}
objective: {{name: f_distill, f: js}}
gan: {{weight: 0.5}}
discriminator: {{features: fake_score, taps: encoder}}
train: {{steps: 1, batch_size: 4, progress: false, sample_every: 0, grad_clip: 0.0}}
"""))
    trainer = build_trainer(cfg, tmp_path / f"run{split}")
    for opt in (trainer.opt_generator, trainer.opt_fake):  # keep the gradients for comparison
        opt.step = lambda *a, **k: None
        opt.zero_grad = lambda *a, **k: None
    stats = [trainer.generator_step(), trainer.fake_step(reuse=True)]
    monkeypatch.undo()
    grads = [p.grad.clone() for m in (trainer.generator, trainer.fake_score, trainer.discriminator)
             for p in m.parameters()]
    return stats, grads, modes


def test_the_critics_split_pass_trains_as_the_one_batched_pass(tmp_path, monkeypatch):
    path = save_pixel_pipeline(tmp_path / "t", DDPMScheduler(), num_class_embeds=10)
    stats_split, params_split, modes_split = _two_steps(tmp_path, path, True, monkeypatch)
    stats_one, params_one, modes_one = _two_steps(tmp_path, path, False, monkeypatch)
    # the generator's GAN pass is features-only either way; the critic's real rows are
    # features-only where the fake score stops early, else inside its one batched pass
    assert modes_split.count("only") == 2 and modes_one.count("only") == 1, (modes_split, modes_one)
    for a, b in zip(stats_split, stats_one):
        for key in set(a) & {"loss_f", "loss_disc", "loss_gan", "loss_g", "grad_norm_generator", "grad_norm_fake"}:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert len(params_split) == len(params_one)
    for a, b in zip(params_split, params_one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
