"""Tiny diffusers pipelines built from configs (no hub access): pixel and latent text-to-image."""

from __future__ import annotations

from pathlib import Path

import torch

PIXEL_UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                  block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)


def pixel_unet(num_class_embeds=None, seed=0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**PIXEL_UNET, num_class_embeds=num_class_embeds)


def save_pixel_pipeline(path, scheduler, num_class_embeds=None, seed=0) -> str:
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=pixel_unet(num_class_embeds, seed), scheduler=scheduler).save_pretrained(path)
    return str(path)


def clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges (every character is a token)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def save_latent_pipeline(path: Path, seed=0) -> str:
    """Stable-Diffusion layout: UNet2DConditionModel + AutoencoderKL (x2) + CLIP, DDPM scheduler."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=16))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return str(path)


def tiny_vae(shift_factor=None):
    from diffusers import AutoencoderKL

    kwargs = {"shift_factor": shift_factor, "scaling_factor": 1.5} if shift_factor is not None else {}
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=16, **kwargs)


def clip_encoder(projection: bool, hidden=32, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=len(clip_tokenizer()), max_position_embeddings=16, projection_dim=32)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def t5_tokenizer():
    """A character-level T5 tokenizer built offline (the real one is a download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "▁abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                           model_max_length=16)


def save_dit_pipeline(path: Path, seed=0) -> str:
    """DiTPipeline layout: class-conditional latent transformer (1000 classes + the null class)."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=4)
    DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler()).save_pretrained(path)
    return str(path)


def save_sd3_pipeline(path: Path, seed=0) -> str:
    """SD3 layout: joint transformer, two CLIP encoders with projections, no T5, flow matching with shift 3."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                                        pooled_projection_dim=64, out_channels=4, pos_embed_max_size=8)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=tiny_vae(shift_factor=0.06), text_encoder=clip_encoder(True, seed=1),
                                    tokenizer=clip_tokenizer(), text_encoder_2=clip_encoder(True, seed=2),
                                    tokenizer_2=clip_tokenizer(), text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(path)
    return str(path)


def save_sdxl_pipeline(path: Path, seed=0) -> str:
    """SDXL layout: UNet with text_time added conditioning, two CLIP encoders."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                                norm_num_groups=4, attention_head_dim=4, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=clip_encoder(False, seed=1),
                                     text_encoder_2=clip_encoder(True, seed=2), tokenizer=clip_tokenizer(),
                                     tokenizer_2=clip_tokenizer(), unet=unet, scheduler=EulerDiscreteScheduler())
    pipe.save_pretrained(path)
    return str(path)


def save_pixart_pipeline(path: Path, seed=0) -> str:
    """PixArt layout: PixArt transformer (learned variance), T5 encoder."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=2, cross_attention_dim=16, sample_size=8, patch_size=2,
                                           caption_channels=32, norm_type="ada_norm_single")
    tokenizer = t5_tokenizer()
    encoder = T5EncoderModel(T5Config(d_model=32, d_ff=37, num_layers=2, num_heads=2, d_kv=16,
                                      vocab_size=len(tokenizer)))
    PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=tiny_vae(), transformer=transformer,
                        scheduler=DPMSolverMultistepScheduler()).save_pretrained(path)
    return str(path)


def save_flux_pipeline(path: Path, seed=0, guidance_embeds=True, with_t5=True) -> str:
    """FluxPipeline layout: Flux transformer (double and single stream blocks, rotary ids, the guidance
    embedding of a guidance-distilled model), CLIP (pooled) + T5 encoders, flow matching with the
    resolution-dependent shift; latents of 4 channels packed 2x2 into 16."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=[2, 2, 4])
    tokenizer_2 = t5_tokenizer()
    encoder_2 = T5EncoderModel(T5Config(d_model=32, d_ff=37, num_layers=2, num_heads=2, d_kv=16,
                                        vocab_size=len(tokenizer_2)))
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096, shift=3.0)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler, vae=tiny_vae(shift_factor=0.1159),
                        text_encoder=clip_encoder(False, seed=1), tokenizer=clip_tokenizer(),
                        text_encoder_2=encoder_2 if with_t5 else None, tokenizer_2=tokenizer_2 if with_t5 else None)
    pipe.save_pretrained(path)
    return str(path)
