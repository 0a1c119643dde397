"""Attention backends: every backend gives the math kernel's outputs and gradients;
unavailable backends fall back with a warning, never a crash."""

import copy
import warnings

import pytest
import torch
from _tiny import pixel_unet

from onestep.nets.attention import (
    BACKENDS,
    KernelProcessor,
    apply_attention,
    attention_modules,
    resolve,
)


def _run(unet, backend, device="cpu", dtype=torch.float32):
    unet = copy.deepcopy(unet).to(device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = apply_attention([unet], backend, device, dtype)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(device, dtype).requires_grad_(True)
    out = unet(x, torch.tensor([10.0, 500.0], device=device)).sample
    out.float().square().sum().backward()
    grads = [p.grad.float().clone() for p in unet.parameters() if p.grad is not None]
    return chosen, out.float().detach(), x.grad.float().clone(), grads, caught


def test_processor_reaches_every_attention_layer():
    unet = pixel_unet()
    n = len(attention_modules(unet))
    assert n >= 2  # AttnDownBlock2D, AttnUpBlock2D and the mid block
    apply_attention([unet], "math", "cpu")
    assert all(isinstance(m.processor, KernelProcessor) and m.processor.backend == "math"
               for m in attention_modules(unet))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "math"])
def test_cpu_backends_match_math(backend):
    unet = pixel_unet()
    _, ref, ref_gx, ref_grads, _ = _run(unet, "math")
    chosen, out, gx, grads, caught = _run(unet, backend)
    available_on_cpu = {"auto": "flash", "flash": "flash"}
    if backend in available_on_cpu:
        assert chosen == available_on_cpu[backend]
    else:  # efficient / xformers have no CPU kernel here: a warning and a fallback
        assert chosen != backend
        assert any(f"'{backend}' cannot run on cpu" in str(w.message) for w in caught)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, ref_gx, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="valid: auto, xformers, flash, efficient, math"):
        resolve("fast", "cpu")


def test_config_switch_reaches_teacher_generator_and_fake_score(tmp_path):
    from _tiny import save_pixel_pipeline
    from diffusers import DDPMScheduler

    from onestep import config as config_mod
    from onestep.build import build_trainer

    path = save_pixel_pipeline(tmp_path / "t", DDPMScheduler())
    cfg = config_mod.from_dict({"teacher": {"kind": "diffusers", "path": path}, "attention": "math",
                                "train": {"steps": 1, "batch_size": 2, "progress": False}})
    trainer = build_trainer(cfg, tmp_path / "run")
    for net in (trainer.teacher.network, trainer.method.nets.plain_generator, trainer.method.nets.plain_fake_score):
        backends = {m.processor.backend for m in attention_modules(net)}
        assert backends == {"math"}


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["flash", "efficient", "xformers", "auto"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_backends_match_math(backend, dtype):
    if backend == "xformers":
        pytest.importorskip("xformers")
    unet = pixel_unet()
    _, ref, ref_gx, _, _ = _run(unet, "math", "cuda", dtype)
    chosen, out, gx, _, _ = _run(unet, backend, "cuda", dtype)
    assert chosen == backend or backend == "auto"
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gx, ref_gx, atol=5e-2, rtol=5e-2)
