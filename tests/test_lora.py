"""LoRA distillation (issue 23, item 1): generator and fake score as peft adapters on the teacher's
one frozen network.

The oracle: a LoRA run whose adapters hold ``B != 0`` computes the same function as a full run
whose weights are the merged ``W' = W + s B A`` (s = alpha / rank), and by the chain rule its
gradients are ``dL/dB = s G A^T`` and ``dL/dA = s B^T G``, where ``G = dL/dW'`` is the full run's
gradient of the same weight. Every objective that passes its oracles on full networks therefore passes them
with LoRA iff these identities hold, which the first test checks on real trainer steps.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from _tiny import save_pixel_pipeline

from onestep import config as config_mod
from onestep.build import build_trainer
from onestep.cli import main
from onestep.nets import lora

RANK, ALPHA = 4, 8.0
LORA = {"generator": {"lora": {"rank": RANK, "alpha": ALPHA}}, "fake_score": {"lora": {"rank": RANK, "alpha": ALPHA}}}


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    from diffusers import EDMEulerScheduler

    return save_pixel_pipeline(tmp_path_factory.mktemp("t") / "teacher", EDMEulerScheduler(), num_class_embeds=4)


def _config(path, objective, lora_on: bool, **train):
    data = {"teacher": {"kind": "diffusers", "path": path}, "objective": objective,
            "train": {"steps": 2, "batch_size": 4, "progress": False, "grad_clip": 0.0, **train},
            **(LORA if lora_on else {})}
    return config_mod.from_dict(data)


def _keep_gradients(*optimizers):
    for opt in optimizers:
        opt.step = lambda *a, **k: None
        opt.zero_grad = lambda *a, **k: None


def _base_of(view):
    return view.__dict__["base"]


OBJECTIVES = [{"name": "sid"}, {"name": "dmd"}, {"name": "diff_instruct"},
              {"name": "f_distill", "f": "js"}, {"name": "uni_instruct", "f": "fkl"}]


def _perturb_and_merge(view, full_network, seed):
    """A non-zero B for ``view``'s adapter (so that neither the fake score nor the generator is the
    teacher, and every gradient is non-trivial), and the full run's network set to the merged
    weights ``W + s B A``: both runs then start from the same function."""
    with torch.no_grad():
        for key, p in view.adapter.items():
            if "/lora_B/" in key:
                p.copy_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel())))
    merged = lora.merged_copy(view)
    full_network.load_state_dict(merged.state_dict())


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: "-".join(map(str, o.values())))
def test_lora_gradients_are_the_chain_rule_of_the_full_gradients(tmp_path, teacher_path, objective):
    full = build_trainer(_config(teacher_path, objective, False), tmp_path / "full")
    low = build_trainer(_config(teacher_path, objective, True), tmp_path / "lora")
    if full.discriminator is not None:  # its heads are drawn from the global RNG: make them equal
        low.method.nets.plain_discriminator.load_state_dict(full.method.nets.plain_discriminator.state_dict())
    nets_full, nets_low = full.method.nets, low.method.nets
    _perturb_and_merge(nets_low.plain_generator.network, nets_full.plain_generator.network, 1)
    _perturb_and_merge(nets_low.plain_fake_score.network, nets_full.plain_fake_score.network, 2)
    _keep_gradients(full.opt_generator, full.opt_fake, low.opt_generator, low.opt_fake)
    stats_full, stats_low = full.generator_step(), low.generator_step()
    assert abs(stats_full["loss_g"]) > 1e-4  # the fake score is not the teacher: a real loss
    assert stats_low["loss_g"] == pytest.approx(stats_full["loss_g"], rel=1e-4, abs=1e-6)
    _check_chain_rule(nets_full.plain_generator.network.unet, nets_low.plain_generator.network)
    full.fake_step(reuse=True)
    low.fake_step(reuse=True)
    _check_chain_rule(nets_full.plain_fake_score.network.unet, nets_low.plain_fake_score.network)


def _check_chain_rule(full_unet, view):
    """Each adapted weight W' = W + s B A: dL/dB = s G A^T and dL/dA = s B^T G, G = the full run's
    dL/dW' (the same function, so the same G)."""
    scale = ALPHA / RANK
    full = dict(full_unet.named_modules())
    carriers = {n: m for n, m in _base_of(view).unet.named_modules() if hasattr(m, "lora_A") and view.name in m.lora_A}
    assert len(carriers) > 10
    largest = 0.0
    for name, module in carriers.items():
        g = full[name].weight.grad.flatten(1)  # (out, in * k * k)
        a, b = module.lora_A[view.name].weight, module.lora_B[view.name].weight
        a_flat, b_flat = a.detach().flatten(1), b.detach().flatten(1)  # (rank, in * k * k), (out, rank)
        largest = max(largest, g.abs().max().item())
        atol = 1e-5 * max(g.abs().max().item(), 1e-3)
        torch.testing.assert_close(b.grad.flatten(1), scale * g @ a_flat.T, rtol=1e-3, atol=atol, msg=name)
        torch.testing.assert_close(a.grad.flatten(1), scale * b_flat.T @ g, rtol=1e-3, atol=atol, msg=name)
    assert largest > 1e-3  # the identities are not checked on zeros
    # nothing else of the base receives a gradient
    assert all(p.grad is None for n, p in _base_of(view).named_parameters() if not lora.is_adapter_parameter(n))


def test_gradient_checkpointing_recomputes_with_the_adapter_of_the_forward(tmp_path, teacher_path):
    """sid backpropagates through the teacher, the fake score and the generator, all one base:
    checkpointed blocks recomputed in backward (when every adapter is off again) must see the
    adapter they ran with, so the gradients equal the uncheckpointed ones."""
    grads = []
    for ckpt in (False, True):
        tr = build_trainer(_config(teacher_path, {"name": "sid"}, True, gradient_checkpointing=ckpt),
                           tmp_path / f"run{ckpt}")
        assert tr.teacher.network.unet.is_gradient_checkpointing == ckpt
        with torch.no_grad():  # a non-zero B, so that a recomputation without the adapter would differ
            for p in tr.method.nets.plain_fake_score.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
            for p in tr.method.nets.plain_generator.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
        _keep_gradients(tr.opt_generator)
        tr.generator_step()
        grads.append([p.grad.clone() for p in tr.generator.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_one_base_in_memory_and_each_step_moves_only_its_adapter(tmp_path, teacher_path):
    tr = build_trainer(_config(teacher_path, {"name": "sid"}, True), tmp_path / "run")
    base = tr.teacher.network
    gen, fake = tr.method.nets.plain_generator, tr.method.nets.plain_fake_score
    assert _base_of(gen.network) is base and _base_of(fake.network) is base
    # what the optimizers see: each adapter, nothing of the base
    assert {id(p) for p in gen.parameters()} == {id(p) for p in lora.adapter_parameters(base, "generator").values()}
    assert {id(p) for p in fake.parameters()} == {id(p) for p in lora.adapter_parameters(base, "fake_score").values()}
    unique = {id(p): p for m in (tr.teacher.network, gen, fake) for p in m.parameters()}
    base_numel = sum(p.numel() for n, p in base.named_parameters() if not lora.is_adapter_parameter(n))
    adapters = sum(p.numel() for p in (*gen.parameters(), *fake.parameters()))
    assert sum(p.numel() for p in unique.values()) == base_numel + adapters

    def snap(module, adapters_too=False):
        return {n: p.detach().clone() for n, p in module.named_parameters()
                if adapters_too or not lora.is_adapter_parameter(n)}

    x, sigma, cond = torch.randn(3, 3, 8, 8), torch.tensor([0.3, 1.0, 5.0]), torch.tensor([0, 1, 2])
    teacher_before, out_before = snap(base), tr.teacher(x, sigma, cond)
    g0, f0 = snap(gen, True), snap(fake, True)
    tr.generator_step()
    assert all(p.grad is None for p in fake.parameters())
    assert snap(fake, True).keys() == f0.keys() and all(torch.equal(v, f0[k]) for k, v in snap(fake, True).items())
    assert any(not torch.equal(v, g0[k]) for k, v in snap(gen, True).items())
    g1 = snap(gen, True)
    tr.fake_step(reuse=True)
    assert all(torch.equal(v, g1[k]) for k, v in snap(gen, True).items())
    assert any(not torch.equal(v, f0[k]) for k, v in snap(fake, True).items())
    # the teacher: its base weights bit for bit, and its calls see no adapter
    assert all(torch.equal(v, teacher_before[k]) for k, v in snap(base).items())
    assert torch.equal(tr.teacher(x, sigma, cond), out_before)
    assert not torch.equal(gen.network(x, sigma, cond), out_before)  # while the generator's does


def _run(tmp_path, path, steps, out="run", resume=False, **train):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": path}, "objective": {"name": "dmd"},
                                   **LORA, "train": {"steps": steps, "batch_size": 2, "checkpoint_every": 1,
                                                     "progress": False, "ema_halflife_kimg": 0.01, **train}}))
    return main(["distill", "--config", str(cfg), "--output", str(tmp_path / out)] + (["--resume", "latest"] if resume else []))


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_lora_run_resumes_bit_identically_and_exports_merged(tmp_path, teacher_path):
    assert _run(tmp_path, teacher_path, 3, "straight") == 0
    assert _run(tmp_path, teacher_path, 2, "resumed") == 0
    assert _run(tmp_path, teacher_path, 3, "resumed", resume=True) == 0
    a = _tensors(tmp_path / "straight" / "checkpoints" / "step-00000003.safetensors")
    b = _tensors(tmp_path / "resumed" / "checkpoints" / "step-00000003.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint holds the adapters, not a copy of the base
    nets = [k for k in a if k.startswith(("generator.", "fake_score.", "ema."))]
    assert nets and all("/lora_" in k for k in nets)
    run = tmp_path / "straight"
    # `onestep sample` (the adapter on the teacher's weights) == the merged full export, raw and EMA
    import numpy as np

    from onestep.portable.pipeline import OneStepPipeline

    n, seed = 4, 3
    for ema in (False, True):
        flag = ["--ema"] if ema else []
        npy, out = tmp_path / f"s{ema}.npy", tmp_path / f"exp{ema}"
        assert main(["sample", "--run", str(run), "--output", str(npy), "--num-samples", str(n),
                     "--seed", str(seed), *flag]) == 0
        assert main(["export", "--run", str(run), "--output", str(out), *flag]) == 0
        pipe = OneStepPipeline.from_pretrained(out)
        assert not any("lora" in name for name, _ in pipe.unet.named_parameters())
        got = pipe(class_labels=[0, 1, 2, 3], generator=OneStepPipeline.index_generators(seed, n),
                   output_type="latent").images
        np.testing.assert_allclose(got.numpy(), np.load(npy), atol=2e-5, rtol=0)
    assert not np.array_equal(np.load(tmp_path / "sFalse.npy"), np.load(tmp_path / "sTrue.npy"))


def test_lora_samples_refuse_a_changed_teacher(tmp_path, teacher_path, capsys):
    import shutil

    copy = tmp_path / "teacher"
    shutil.copytree(teacher_path, copy)
    assert _run(tmp_path, str(copy), 1) == 0
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(copy / "unet")
    with torch.no_grad():
        unet.conv_in.weight.mul_(1.01)
    unet.save_pretrained(copy / "unet")
    capsys.readouterr()
    assert main(["sample", "--run", str(tmp_path / "run"), "--output", str(tmp_path / "s.npy"), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the one the LoRA adapters" in err[0], err


BAD = [
    ({"generator": {"lora": {"rank": 0}}}, "expected an integer >= 1"),
    ({"fake_score": {"lora": {"alpha": 4}}}, "set it to use fake_score.lora.alpha"),
    ({"generator": {"lora": {"rank": 2, "target_modules": ["no_such_layer"]}}}, "match no linear or conv layer"),
    ({"generator": {"lora": {"rank": 2}}, "train": {"sharding": "fsdp"}}, "not supported with LoRA"),
]


@pytest.mark.parametrize("extra,fragment", BAD, ids=["rank0", "alpha-alone", "targets", "fsdp"])
def test_bad_lora_settings_are_one_line_and_write_nothing(tmp_path, teacher_path, capsys, extra, fragment):
    cfg = tmp_path / "cfg.yaml"
    data = {"teacher": {"kind": "diffusers", "path": teacher_path}, "objective": {"name": "dmd"},
            "train": {"steps": 1, "batch_size": 2, "progress": False}}
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v}
    cfg.write_text(yaml.safe_dump(data))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "run").exists()


def test_lora_on_a_network_without_known_targets_is_refused(tmp_path, capsys):
    from conftest import ROOT

    out = main(["distill", "--config", str(ROOT / "configs" / "gmm.yaml"), "--output", str(tmp_path / "run"),
                "--set", "generator.lora.rank=4", "--set", "train.steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert out == 2 and len(err) == 1 and "no known target modules for the network MLPDenoiser" in err[0], err


def test_without_peft_a_lora_config_names_the_extra(tmp_path, teacher_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    out = main(["distill", "--config", str(_write(tmp_path, teacher_path)), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert out == 2 and len(err) == 1 and "onestep[lora]" in err[0], err
    assert not (tmp_path / "run").exists()


def _write(tmp_path, path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": path}, **LORA,
                                   "train": {"steps": 1, "batch_size": 2, "progress": False}}))
    return cfg


def test_checkpoint_records_the_base_fingerprint(tmp_path, teacher_path):
    assert _run(tmp_path, teacher_path, 1) == 0
    from safetensors import safe_open

    with safe_open(tmp_path / "run" / "checkpoints" / "step-00000001.safetensors", "pt") as f:
        recorded = json.loads(f.metadata()["network_fingerprint"])
    assert isinstance(recorded, float) and recorded > 0


@pytest.mark.parametrize("builder", ["save_latent_pipeline", "save_sdxl_pipeline", "save_sd3_pipeline",
                                     "save_dit_pipeline", "save_pixart_pipeline"])
def test_the_estimate_counts_what_peft_injects(tmp_path, builder):
    import _tiny

    from onestep.build import build_teacher
    from onestep.train import memory

    path = getattr(_tiny, builder)(tmp_path / "t")
    (tmp_path / "p.txt").write_text("a cat\n")
    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": path, "prompts": str(tmp_path / "p.txt")}})
    network = build_teacher(cfg).network
    settings = lora.LoraSettings(3, 3.0)
    predicted = lora.count_parameters(network, settings)
    cfg.generator.lora.rank = 3
    trained = memory.trained_parameters(network, cfg)
    assert trained["generator"] == predicted
    assert trained["fake_score"] == sum(p.numel() for p in network.parameters())
    view = lora.add_adapter(network, "generator", settings)
    assert predicted == sum(p.numel() for p in view.parameters()) > 0


def test_the_estimate_of_a_lora_run_equals_its_checkpoint(tmp_path, teacher_path):
    from onestep.train import memory

    assert _run(tmp_path, teacher_path, 1) == 0
    tensors = _tensors(next((tmp_path / "run" / "checkpoints").glob("*.safetensors")))

    def total(prefixes, suffixes=("",)):
        return sum(v.numel() * v.element_size() for k, v in tensors.items()
                   if k.startswith(prefixes) and k.endswith(suffixes) and v.is_floating_point())
    rows = dict(memory.estimate(config_mod.load(tmp_path / "cfg.yaml"), 1).rows)
    assert rows["generator LoRA + fake score LoRA (fp32)"] == total(("generator.", "fake_score."))
    assert rows["EMA (fp32)"] == total(("ema.",))
    assert rows["Adam moments (2 x fp32)"] == total(("opt_generator.", "opt_fake."), ("exp_avg", "exp_avg_sq"))


def test_adapters_train_in_fp32_on_a_bf16_teacher(tmp_path, teacher_path):
    """peft gives a new adapter its base layer's dtype; a bf16 base must still train fp32 adapters
    (bf16 would lose Adam's small updates and the EMA's averaging)."""
    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": teacher_path, "dtype": "bfloat16"},
                                "objective": {"name": "dmd"}, **LORA,
                                "train": {"steps": 1, "batch_size": 2, "progress": False, "ema_halflife_kimg": 0.01}})
    tr = build_trainer(cfg, tmp_path / "run")
    base = tr.teacher.network
    assert {p.dtype for n, p in base.named_parameters() if not lora.is_adapter_parameter(n)} == {torch.bfloat16}
    gen, fake = tr.method.nets.plain_generator, tr.method.nets.plain_fake_score
    for module in (gen, fake, tr.ema.module):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    tr.fake_step(reuse=False)  # (at the start the fake score is the teacher: dmd's gradient is zero)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    tr.generator_step()
    assert any(not torch.equal(v, before[k]) for k, v in gen.state_dict().items())


def test_a_lora_run_refuses_to_resume_on_other_teacher_weights(tmp_path, teacher_path, capsys):
    import shutil

    from diffusers import UNet2DModel

    copy = tmp_path / "teacher"
    shutil.copytree(teacher_path, copy)
    assert _run(tmp_path, str(copy), 1) == 0
    unet = UNet2DModel.from_pretrained(copy / "unet")
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)
    unet.save_pretrained(copy / "unet")
    (copy / "checksums.json").unlink(missing_ok=True)
    capsys.readouterr()
    assert _run(tmp_path, str(copy), 2, resume=True) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from those its LoRA adapters were trained on" in err[0], err
