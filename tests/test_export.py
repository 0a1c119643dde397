"""Export: the pipeline loads with onestep and with plain diffusers (trust_remote_code) and
reproduces `onestep sample` bit for bit; stock 1-step samplers load the VP export;
broken directories give one-line errors."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from _tiny import save_latent_pipeline, save_pixel_pipeline
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    EDMEulerScheduler,
)

from onestep.cli import main
from onestep.core.samplers import index_seed
from onestep.errors import OnestepError
from onestep.export import load_pipeline
from onestep.portable.pipeline import OneStepPipeline

ALLOWED_IMPORTS = {"torch", "diffusers", "transformers", "__future__"}


def _top_level_imports(path) -> set[str]:
    import ast

    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.col_offset == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _distill(tmp_path, teacher_path, steps=2, **extra):
    import yaml

    data = {"teacher": {"kind": "diffusers", "path": teacher_path},
            "objective": {"name": "dmd"},
            "train": {"steps": steps, "batch_size": 4, "checkpoint_every": steps, "progress": False,
                      "ema_halflife_kimg": 0.01}}
    for key, value in extra.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--output", str(run)]) == 0
    return run


def test_index_seed_is_shared_with_the_pipeline():
    assert all(index_seed(s, i) == OneStepPipeline.index_seed(s, i) for s in (0, 7, 2**31) for i in (0, 1, 999))
    assert len({index_seed(s, i) for s in range(20) for i in range(2000)}) == 20 * 2000


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    teacher = save_pixel_pipeline(tmp / "teacher", EDMEulerScheduler(), num_class_embeds=10)
    run = _distill(tmp, teacher)
    out = tmp / "pipe"
    assert main(["export", "--run", str(run), "--output", str(out)]) == 0
    return run, out


def test_export_loads_both_ways_and_matches_sample(class_run, tmp_path, monkeypatch):
    run, out = class_run
    files = {p.name for p in out.iterdir()}
    assert {"model_index.json", "pipeline.py", "unet"} <= files
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == ["pipeline", "OneStepPipeline"]
    assert list((out / "unet").glob("*.safetensors"))
    # the exported code imports only the standard library, torch, diffusers (and transformers' CLIP)
    for code in (out / "pipeline.py", out / "scheduler" / "onestep_scheduler.py"):
        assert _top_level_imports(code) <= ALLOWED_IMPORTS | set(sys.stdlib_module_names), code

    n, seed = 10, 5
    npy = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run), "--num-samples", str(n), "--seed", str(seed), "--output", str(npy)]) == 0
    expected = np.load(npy)
    labels = list(range(10))  # `onestep sample` cycles over the classes

    ours = OneStepPipeline.from_pretrained(out)
    got = ours(class_labels=labels, generator=OneStepPipeline.index_generators(seed, n), output_type="latent").images
    np.testing.assert_array_equal(got.numpy(), expected)

    # plain diffusers, with onestep hidden from the import system
    monkeypatch.setitem(__import__("sys").modules, "onestep", None)
    remote = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(remote).__name__ == "OneStepPipeline" and type(remote).__module__ != "onestep.pipeline"
    got2 = remote(class_labels=labels, generator=[torch.Generator().manual_seed(index_seed(seed, i)) for i in range(n)],
                  output_type="latent").images
    np.testing.assert_array_equal(got2.numpy(), expected)
    pil = remote(class_labels=[3, 4], generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and pil[0].size == (8, 8)


def test_ema_export_differs_and_png_sample(class_run, tmp_path):
    run, _ = class_run
    out = tmp_path / "ema"
    assert main(["export", "--run", str(run), "--ema", "--output", str(out)]) == 0
    a = load_pipeline(out)(class_labels=[1], generator=torch.Generator().manual_seed(0), output_type="latent").images
    b = load_pipeline(run.parent / "pipe")(class_labels=[1], generator=torch.Generator().manual_seed(0),
                                          output_type="latent").images
    assert not torch.equal(a, b)
    png = tmp_path / "grid.png"
    assert main(["sample", "--run", str(run), "--num-samples", "20", "--output", str(png)]) == 0
    from PIL import Image

    assert Image.open(png).size[0] > Image.open(png).size[1]  # 10 classes per row, 2 rows


def test_broken_pipeline_directories_give_clear_errors(class_run, tmp_path, capsys):
    _, out = class_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(OnestepError, match="cannot read .*not a valid safetensors file"):
        load_pipeline(broken)
    weights.unlink()
    with pytest.raises(OnestepError, match="missing weights for 'unet'"):
        load_pipeline(broken)
    with pytest.raises(OnestepError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_export_of_a_non_image_run_is_refused(tmp_path, capsys):
    import yaml
    from conftest import SMALL_GMM

    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_GMM, "train": {**SMALL_GMM["train"], "steps": 1, "checkpoint_every": 1}}))
    assert main(["distill", "--config", str(cfg), "--output", str(tmp_path / "run")]) == 0
    assert main(["export", "--run", str(tmp_path / "run"), "--output", str(tmp_path / "p")]) == 2
    assert "only runs on diffusers teachers export" in capsys.readouterr().err


def test_stock_ddim_pipeline_loads_a_vp_export(tmp_path):
    """sigma_init = the table's largest sigma: DDIM (1 step, trailing) reproduces the student;
    the stock sampler feeds unit noise where the student feeds sigma z / sqrt(1 + sigma^2),
    a scale of sqrt(1 - abar_999) = 1 - 2e-5, which the epsilon form amplifies by
    1 / sqrt(abar_999) = 157 (image-space error ~1.5e-3 |z|), hence the tolerance."""
    sched = DDPMScheduler()
    abar = sched.alphas_cumprod[-1].double()
    sigma_max = float(((1 - abar) / abar).sqrt())
    teacher = save_pixel_pipeline(tmp_path / "teacher", sched)
    run = _distill(tmp_path, teacher, **{"generator.sigma_init": sigma_max})
    out = tmp_path / "pipe"
    assert main(["export", "--run", str(run), "--output", str(out)]) == 0
    assert (out / "stock_scheduler" / "scheduler_config.json").is_file()
    ours = load_pipeline(out)
    stock = DDIMPipeline(unet=ours.unet, scheduler=DDIMScheduler.from_pretrained(out, subfolder="stock_scheduler"))
    gens = lambda: OneStepPipeline.index_generators(0, 4)  # noqa: E731
    a = ours(batch_size=4, generator=gens(), output_type="np").images
    b = stock(batch_size=4, generator=gens(), num_inference_steps=1, eta=0.0, output_type="np").images
    assert stock.scheduler.timesteps.tolist() == [999]
    np.testing.assert_allclose(a, b, atol=6e-3, rtol=0)
    assert np.abs(a - b).mean() < 5e-4


def test_stock_lcm_pipeline_loads_a_text_export(tmp_path):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    teacher = save_latent_pipeline(tmp_path / "teacher")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    sched = DDPMScheduler.from_pretrained(teacher, subfolder="scheduler")
    abar = sched.alphas_cumprod[-1].double()
    sigma_max = float(((1 - abar) / abar).sqrt())
    run = _distill(tmp_path, teacher, **{"generator.sigma_init": sigma_max, "teacher.prompts": str(prompts)})
    out = tmp_path / "pipe"
    assert main(["export", "--run", str(run), "--output", str(out)]) == 0
    ours = load_pipeline(out)
    assert ours.vae is not None and ours.text_encoder is not None
    npy = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run), "--num-samples", "2", "--output", str(npy), "--prompt", "a cat"]) == 0
    latents = ours(prompt="a cat", num_images_per_prompt=2, generator=OneStepPipeline.index_generators(0, 2),
                   output_type="latent").images
    np.testing.assert_array_equal(latents.numpy(), np.load(npy))
    stock = StableDiffusionPipeline(vae=ours.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer,
                                    unet=ours.unet, scheduler=LCMScheduler.from_pretrained(out, subfolder="stock_scheduler"),
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    a = ours(prompt="a cat", generator=torch.Generator().manual_seed(1), output_type="np").images
    b = stock("a cat", num_inference_steps=1, guidance_scale=0.0, generator=torch.Generator().manual_seed(1),
              output_type="np").images
    # the stock sampler's input is unit noise, the student's sqrt(1 - abar_999) = 0.9977 of it
    np.testing.assert_allclose(a, b, atol=2e-2, rtol=0)
    assert np.abs(a - b).mean() < 5e-3
