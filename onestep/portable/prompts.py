"""Prompts -> the conditioning of a text-to-image network, through diffusers' own pipelines.

Stable Diffusion 1.x / 2.x (one CLIP encoder) embed with ``encode_prompts`` (the padding and
truncation of ``StableDiffusionPipeline``): a tensor (B, L, D). SDXL, SD3, PixArt and Flux go through
their stock pipeline's ``encode_prompt`` (built on the same components, nothing copied), so the
embeddings are exactly the teacher's: a dict of the network's keyword inputs.
Imports only torch and diffusers (copied into every export).
"""

from __future__ import annotations

import inspect

import torch

STOCK = {  # network class (and whether a second text encoder is present) -> the pipeline that encodes
    ("UNet2DConditionModel", True): "StableDiffusionXLPipeline",
    ("SD3Transformer2DModel", True): "StableDiffusion3Pipeline",
    ("SD3Transformer2DModel", False): "StableDiffusion3Pipeline",
    ("PixArtTransformer2DModel", False): "PixArtAlphaPipeline",
    ("FluxTransformer2DModel", True): "FluxPipeline",
}
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


T5_LENGTH_CAP = {"FluxPipeline": 512, "PixArtAlphaPipeline": 300}  # the longest T5 sequence each encodes


def t5_length(model_max_length, pipeline_name: str) -> int:
    """The T5 sequence length ``encode_text`` encodes prompts with for ``pipeline_name`` (its
    tokenizer's ``model_max_length``, capped at what the stock pipeline accepts)."""
    return min(int(model_max_length), T5_LENGTH_CAP[pipeline_name])


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """CLIP embeddings (B, L, D) fp32 of ``prompts`` (Stable Diffusion's padding and truncation)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0].float()


def stock_pipeline_name(network, parts: dict) -> str | None:
    """The diffusers pipeline whose ``encode_prompt`` serves this network (None: SD 1.x / 2.x)."""
    return STOCK.get((type(network).__name__, parts.get("text_encoder_2") is not None))


def _stock(name: str, network, parts: dict, vae, scheduler):
    import diffusers

    cls = getattr(diffusers, name)
    wanted = inspect.signature(cls.__init__).parameters
    kwargs = {k: parts.get(k) for k in TEXT_PARTS if k in wanted}
    kwargs.update({k: v for k, v in (("vae", vae), ("scheduler", scheduler)) if k in wanted})
    kwargs["transformer" if "transformer" in wanted else "unet"] = network
    for extra, value in (("safety_checker", None), ("feature_extractor", None), ("image_encoder", None),
                         ("requires_safety_checker", False), ("add_watermarker", False)):
        if extra in wanted:
            kwargs[extra] = value
    return cls(**kwargs)


@torch.no_grad()
def encode_text(network, parts: dict, prompts: list[str], image_size: tuple[int, int], vae=None,
                scheduler=None) -> tuple[object, object]:
    """(conditioning of ``prompts``, the unconditional conditioning the guided pipeline uses),
    each a tensor or a dict of tensors with ``len(prompts)`` (resp. 1) rows, fp32."""
    name = stock_pipeline_name(network, parts)
    if name is None:
        return (encode_prompts(parts["tokenizer"], parts["text_encoder"], prompts),
                encode_prompts(parts["tokenizer"], parts["text_encoder"], [""]))
    pipe = _stock(name, network, parts, vae, scheduler)
    device = next(network.parameters()).device
    if name == "StableDiffusionXLPipeline":
        pe, npe, pooled, npooled = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True)
        ids = pipe._get_add_time_ids(image_size, (0, 0), image_size, dtype=pe.dtype,
                                     text_encoder_projection_dim=parts["text_encoder_2"].config.projection_dim)
        cond = {"encoder_hidden_states": pe, "text_embeds": pooled, "time_ids": ids.expand(len(pe), -1)}
        uncond = {"encoder_hidden_states": npe[:1], "text_embeds": npooled[:1], "time_ids": ids[:1]}
    elif name == "StableDiffusion3Pipeline":
        pe, npe, pooled, npooled = pipe.encode_prompt(prompts, None, None, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=True)
        cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
        uncond = {"encoder_hidden_states": npe[:1], "pooled_projections": npooled[:1]}
    elif name == "FluxPipeline":  # guidance-distilled: no negative branch (the guidance is a network input)
        length = t5_length(parts["tokenizer_2"].model_max_length, name)
        pe, pooled, _ = pipe.encode_prompt(prompts, None, device=device, num_images_per_prompt=1,
                                           max_sequence_length=length)
        npe, npooled, _ = pipe.encode_prompt([""], None, device=device, num_images_per_prompt=1,
                                             max_sequence_length=length)
        cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
        uncond = {"encoder_hidden_states": npe, "pooled_projections": npooled}
    else:  # PixArt
        length = t5_length(parts["tokenizer"].model_max_length, "PixArtAlphaPipeline")
        pe, mask, npe, nmask = pipe.encode_prompt(prompts, do_classifier_free_guidance=True, device=device,
                                                  clean_caption=False, max_sequence_length=length)
        cond = {"encoder_hidden_states": pe, "encoder_attention_mask": mask}
        uncond = {"encoder_hidden_states": npe[:1], "encoder_attention_mask": nmask[:1]}
    fp32 = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in cond.items()}
    return fp32, {k: (v.float() if torch.is_floating_point(v) else v) for k, v in uncond.items()}
