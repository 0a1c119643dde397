"""Export a LoRA run's generator as a diffusers LoRA (``onestep export --lora``).

The directory holds ``pytorch_lora_weights.safetensors`` written by the base pipeline's own
``save_lora_weights`` (peft's state dict of the generator's adapter, with its ``LoraConfig`` as
adapter metadata so that ``load_lora_weights`` restores rank, alpha and targets), the one-step
scheduler under ``scheduler/``, a model card, and ``onestep_lora.json`` (the recipe, and the
marker ``--overwrite`` checks). Loading it:

    pipe = <BasePipeline>.from_pretrained(base)
    pipe.load_lora_weights(dir)
    pipe.scheduler = <Scheduler>.from_pretrained(dir, subfolder="scheduler")
    pipe(prompt, **recipe["call"], latents=recipe["latent_scale"] * randn(...))

The one-step generator is ``x0 = D(sigma_init z, sigma_init)``: a stock pipeline feeds the network
unit noise ``z`` where the generator feeds it ``c z`` (VP: ``c = sqrt(1 - abar_T)``; flow:
``c = t_init``). With ``latents = c z`` the stock pipeline computes the generator exactly; without
it, the image differs by that factor's effect (c = 0.9977 for SD's table).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .core.io import write_dir
from .core.paths import LORA_MARKER, pipeline_class
from .errors import OnestepError
from .nets import lora
from .nets.diffusers_unet import DEFAULT_RESOLUTION
from .portable.prompts import T5_LENGTH_CAP, t5_length
from .runs import load_generator, run_config
from .teachers.diffusers import resolve_pipeline

# base pipelines with a LoRA loader, and the component their LoRA adapts
LORA_PIPELINES = {"StableDiffusionPipeline": "unet", "StableDiffusionXLPipeline": "unet",
                  "StableDiffusion3Pipeline": "transformer", "FluxPipeline": "transformer"}
KIND = "OneStepLoRA"


def teacher_dir(cfg) -> Path:
    """The teacher's local directory (a hub id: its cached snapshot; nothing is downloaded)."""
    return resolve_pipeline(str(cfg.teacher.path), download=False)


def base_pipeline(cfg) -> str:
    """The teacher's stock pipeline class, refused in one line where it has no LoRA loader, or
    where the run adapted another subfolder than the one its loader targets."""
    found = pipeline_class(teacher_dir(cfg)) if cfg.teacher.path else None
    if found not in LORA_PIPELINES:
        what = f"a {found}" if found else f"{cfg.teacher.path} (not a pipeline directory)"
        raise OnestepError(f"--lora exports for pipelines with a LoRA loader ({', '.join(LORA_PIPELINES)}); the "
                           f"teacher is {what}: export the full pipeline instead (drop --lora)")
    component = LORA_PIPELINES[found]
    if cfg.teacher.subfolder not in (None, component):
        raise OnestepError(f"--lora: the run adapted teacher.subfolder '{cfg.teacher.subfolder}', but "
                           f"{found}.load_lora_weights adapts its '{component}'; export the full pipeline instead")
    return found


def one_step_recipe(network, sigma_init: float, base: str, extra: dict | None = None) -> dict:
    """The stock scheduler and call arguments that make ``base`` compute the generator in one step:
    {"scheduler": a scheduler object, "call": kwargs of the pipeline call, "latent_scale": c}.
    ``extra``: call arguments a flow pipeline needs besides (Flux: height, width, T5 length)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    guidance = {"guidance_scale": 0.0} if base != "FluxPipeline" else {"guidance_scale": 1.0}
    if network.kind == "vp":
        scheduler = network.stock_scheduler(sigma_init)
        if scheduler is None:
            lo, hi = network.sigma_range
            raise OnestepError(f"--lora: a stock 1-step scheduler reproduces a VP generator only at the table's "
                               f"last timestep (generator.sigma_init {hi:.6g}); this run has {sigma_init:.6g}: "
                               f"export the full pipeline instead (drop --lora)")
        return {"scheduler": scheduler, "call": {"num_inference_steps": 1, **guidance},
                "latent_scale": sigma_init / math.sqrt(1 + sigma_init**2)}
    if network.kind == "flow":
        t = sigma_init / (1 + sigma_init)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=network.param["num_train_timesteps"],
                                                    shift=1.0)
        call = {"sigmas": [t], **guidance, **(extra or {})}
        if network.guidance is not None:  # a guidance-distilled model's guidance input (Flux-dev): the teacher's
            call["guidance_scale"] = network.guidance
        return {"scheduler": scheduler, "call": call, "latent_scale": t}
    raise OnestepError(f"--lora: no stock one-step scheduler for a {network.kind} teacher; drop --lora")


def flux_call(cfg) -> dict:
    """FluxPipeline's call arguments the generator fixes: the image size (``teacher.resolution``) and
    the T5 length the conditioning was encoded with (``portable.prompts.encode_text``)."""
    side = cfg.teacher.resolution or DEFAULT_RESOLUTION
    cap = T5_LENGTH_CAP["FluxPipeline"]
    try:
        tokenizer = json.loads((teacher_dir(cfg) / "tokenizer_2" / "tokenizer_config.json").read_text())
        length = t5_length(tokenizer.get("model_max_length", cap), "FluxPipeline")
    except (OSError, ValueError, TypeError):
        length = cap
    return {"height": side, "width": side, "max_sequence_length": length}


def export_lora(run_dir, output, ema: bool = False) -> Path:
    """Write the LoRA directory of a LoRA run's generator (raw or EMA); returns its path."""
    import diffusers

    cfg = run_config(run_dir)  # checked before the weights are loaded
    if cfg.generator.lora.rank is None:
        raise OnestepError(f"--lora: run {run_dir} trained the full generator (generator.lora was not set); "
                           f"export it without --lora")
    base = base_pipeline(cfg)
    get_peft_model_state_dict = lora.require_peft().get_peft_model_state_dict
    generator, cfg, step = load_generator(run_dir, ema=ema)
    view = generator.network
    recipe = one_step_recipe(view, cfg.generator.sigma_init, base, flux_call(cfg) if base == "FluxPipeline" else None)
    model = view.base.unet
    layers = get_peft_model_state_dict(model, adapter_name=view.name)
    config = model.peft_config[view.name].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    component = LORA_PIPELINES[base]
    info = {"_class_name": KIND, "base_pipeline": base, "base_model": str(cfg.teacher.path),
            "scheduler": type(recipe["scheduler"]).__name__, "call": recipe["call"],
            "latent_scale": recipe["latent_scale"], "rank": config["r"], "alpha": config["lora_alpha"],
            "ema": ema, "step": step, "objective": cfg.objective.name}

    def write(tmp: Path) -> None:
        (tmp / LORA_MARKER).write_text(json.dumps(info, indent=1))
        getattr(diffusers, base).save_lora_weights(
            tmp, safe_serialization=True, **{f"{component}_lora_layers": layers,
                                             f"{component}_lora_adapter_metadata": config})
        recipe["scheduler"].save_pretrained(tmp / "scheduler")
        (tmp / "README.md").write_text(model_card(info))

    return write_dir(output, write)


def model_card(info: dict) -> str:
    call = ", ".join(f"{k}={v!r}" for k, v in info["call"].items())
    return f"""---
library_name: diffusers
base_model: {info['base_model']}
tags: [diffusers, lora, one-step, distillation, {info['objective']}]
---
# One-step LoRA for {info['base_model']}

A LoRA (rank {info['rank']}, alpha {info['alpha']}) distilled with onestep ({info['objective']},
{info['step']} iterations, {'EMA' if info['ema'] else 'raw'} weights) that turns the base model into a
one-step generator. Guidance-free: one network evaluation per image.

```python
import torch
from diffusers import {info['base_pipeline']}, {info['scheduler']}

pipe = {info['base_pipeline']}.from_pretrained("{info['base_model']}")
pipe.load_lora_weights("<this directory>")
pipe.scheduler = {info['scheduler']}.from_pretrained("<this directory>", subfolder="scheduler")
image = pipe("a photo of a cat", {call}).images[0]
```

Exactly the distilled generator: pass `latents = {info['latent_scale']:.6g} * torch.randn(...)` (the
generator's input noise scale{'; FluxPipeline takes latents packed with `pipe._pack_latents`' if info['base_pipeline'] == 'FluxPipeline' else ''};
the stock pipeline starts from unit noise, which gives nearly the same image). The same weights merged
into a full pipeline: `onestep export` without `--lora`.
"""
