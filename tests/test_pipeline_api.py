"""The exported pipeline behaves like any diffusers pipeline (checks adapted from diffusers'
PipelineTesterMixin, written here): standard arguments, components round trip, from_pipe,
save/load both ways, latents, callbacks, output types, offload, fp8 layerwise casting, model card.
Over a pixel unconditional, a class-conditional and a text-to-image export, loaded with onestep
and with plain diffusers (trust_remote_code)."""

import json
import sys

import numpy as np
import pytest
import torch
from _tiny import save_latent_pipeline, save_pixel_pipeline
from diffusers import DDPMScheduler, DiffusionPipeline, EDMEulerScheduler

from onestep import OneStepPipeline
from onestep.cli import main

KINDS = ("pixel", "class", "text")


def _export(tmp, kind: str):
    import yaml

    if kind == "text":
        teacher = save_latent_pipeline(tmp / "teacher")
        prompts = tmp / "prompts.txt"
        prompts.write_text("a red square\na blue circle\n")
        extra = {"prompts": str(prompts)}
    else:
        teacher = save_pixel_pipeline(tmp / "teacher", EDMEulerScheduler() if kind == "class" else DDPMScheduler(),
                                      num_class_embeds=10 if kind == "class" else None)
        extra = {}
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"teacher": {"kind": "diffusers", "path": teacher, **extra},
                                   "objective": {"name": "dmd"},
                                   "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1, "progress": False,
                                             "sample_every": 0}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp / "run")]) == 0
    assert main(["export", "--run", str(tmp / "run"), "--output", str(tmp / "pipe")]) == 0
    return tmp / "pipe"


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tmp_path_factory):
    return request.param, _export(tmp_path_factory.mktemp(request.param), request.param)


def _loaders(path, monkeypatch=None):
    yield "onestep", OneStepPipeline.from_pretrained(path)
    yield "diffusers", DiffusionPipeline.from_pretrained(path, trust_remote_code=True)


def _args(kind: str, n: int = 2, seed: int = 0, **overrides) -> dict:
    args = {"generator": OneStepPipeline.index_generators(seed, n), "output_type": "np"}
    if kind == "text":
        args["prompt"] = ["a red square", "a cat"][:n] if n <= 2 else ["a cat"] * n
    elif kind == "class":
        args["class_labels"] = list(range(n))
    else:
        args["batch_size"] = n
    return {**args, **overrides}


def test_the_usual_call_and_standard_arguments(exported):
    kind, path = exported
    for _, pipe in _loaders(path):
        ref = pipe(**_args(kind)).images
        again = pipe(**_args(kind, num_inference_steps=1, guidance_scale=0.0)).images
        np.testing.assert_array_equal(ref, again)
        assert ref.shape[0] == 2 and ref.shape[-1] == 3 and ref.min() >= 0 and ref.max() <= 1
        with pytest.raises(ValueError, match="num_inference_steps=1"):
            pipe(**_args(kind, num_inference_steps=4))
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        np.testing.assert_array_equal(pipe(**_args(kind, height=size, width=size)).images, ref)
        with pytest.raises(ValueError, match="makes"):
            pipe(**_args(kind, height=size * 2, width=size * 2))
        with pytest.raises(ValueError, match="guidance"):
            pipe(**_args(kind, negative_prompt="blurry"))
        # guidance_scale > 1 is ignored (the student is guidance-free), with a warning
        np.testing.assert_array_equal(pipe(**_args(kind, guidance_scale=7.5)).images, ref)


def test_latents_callback_dict_and_tuple_and_output_types(exported):
    kind, path = exported
    pipe = OneStepPipeline.from_pretrained(path)
    shape = (2, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    z = torch.stack([torch.randn(shape[1:], generator=g) for g in OneStepPipeline.index_generators(0, 2)])
    args = _args(kind)
    args.pop("generator")
    ref = pipe(**_args(kind, output_type="latent")).images
    torch.testing.assert_close(pipe(**{**args, "output_type": "latent", "latents": z}).images, ref, rtol=0, atol=0)
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, tensors["latents"].shape))
        return {"latents": tensors["latents"] * 0}

    zeroed = pipe(**_args(kind, output_type="latent", callback_on_step_end=callback)).images
    assert seen == [(0, ref.shape)] and torch.count_nonzero(zeroed) == 0
    as_tuple = pipe(**_args(kind, return_dict=False))[0]
    np.testing.assert_array_equal(as_tuple, pipe(**_args(kind)).images)
    assert pipe(**_args(kind, output_type="pt")).images.shape[:2] == (2, 3)
    assert len(pipe(**_args(kind, output_type="pil")).images) == 2


def test_components_from_pipe_and_resave_round_trip(exported, tmp_path):
    kind, path = exported
    pipe = OneStepPipeline.from_pretrained(path)
    ref = pipe(**_args(kind)).images
    np.testing.assert_array_equal(OneStepPipeline(**pipe.components)(**_args(kind)).images, ref)
    np.testing.assert_array_equal(OneStepPipeline.from_pipe(pipe)(**_args(kind)).images, ref)
    for name, loaded in _loaders(path):
        out = tmp_path / name
        loaded.save_pretrained(out)
        index = json.loads((out / "model_index.json").read_text())
        assert index["_class_name"] == ["pipeline", "OneStepPipeline"], index
        for _, again in _loaders(out):  # re-saved either way, it loads either way, same images
            np.testing.assert_array_equal(again(**_args(kind)).images, ref)


def test_num_images_per_prompt_and_batch_consistency(exported):
    kind, path = exported
    pipe = OneStepPipeline.from_pretrained(path)
    batch = pipe(**_args(kind, n=2, output_type="latent")).images
    one = [pipe(**_args(kind, n=1, generator=[g], output_type="latent")).images
           for g in OneStepPipeline.index_generators(0, 2)]
    if kind == "pixel":
        torch.testing.assert_close(torch.cat(one), batch, atol=1e-5, rtol=1e-5)
    if kind != "pixel":
        args = _args(kind, n=1, generator=OneStepPipeline.index_generators(0, 3), num_images_per_prompt=3)
        assert pipe(**args).images.shape[0] == 3
    if kind == "text":
        embeds, negative = pipe.encode_prompt("a cat", num_images_per_prompt=2)
        assert embeds.shape[0] == 2 and negative is None


def test_offload_and_fp8_layerwise_casting(exported):
    kind, path = exported
    ref = OneStepPipeline.from_pretrained(path)(**_args(kind, output_type="pt")).images
    pipe = OneStepPipeline.from_pretrained(path)
    pipe.enable_model_cpu_offload(device="cpu")
    torch.testing.assert_close(pipe(**_args(kind, output_type="pt")).images, ref)
    pipe = OneStepPipeline.from_pretrained(path)
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    fp8 = pipe(**_args(kind, output_type="pt")).images
    assert torch.isfinite(fp8).all() and (fp8 - ref).abs().mean() < 0.05


def test_model_card_and_quiet_loading(exported, capsys):
    kind, path = exported
    card = (path / "README.md").read_text()
    assert "dmd" in card and "trust_remote_code=True" in card and "library_name: diffusers" in card
    DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    err = capsys.readouterr().err
    assert len(err) < 2000, err[:500]  # no config dumps in deprecation warnings


def test_plain_diffusers_loads_without_onestep(exported, monkeypatch):
    kind, path = exported
    ref = OneStepPipeline.from_pretrained(path)(**_args(kind)).images
    monkeypatch.setitem(sys.modules, "onestep", None)
    remote = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    assert type(remote).__module__ != "onestep.portable.pipeline"
    np.testing.assert_array_equal(remote(**_args(kind)).images, ref)
