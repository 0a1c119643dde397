"""Teachers loaded from diffusers pipelines (directories or hub ids).

Pixel UNets (unconditional or class-conditional) and latent text-to-image UNets
(Stable-Diffusion layout: UNet2DConditionModel + AutoencoderKL + CLIP). Latent teachers
distill in latent space; the VAE only decodes for previews, evaluation and export. The
teacher applies classifier-free guidance (``teacher.guidance_scale``); the generator and
fake score are guidance-free copies of its UNet.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .diffusers_denoiser import DiffusersDenoiser, parameterization_of
from .errors import OnestepError
from .teacher import NetworkTeacher, freeze

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_component(path: str, name: str, entry, dtype=None):
    library, cls_name = entry
    cls = getattr(importlib.import_module(library), cls_name)
    kwargs = {"subfolder": name}
    if dtype is not None and hasattr(cls, "dtype"):
        kwargs["torch_dtype"] = dtype
    return cls.from_pretrained(path, **kwargs)


def load_components(path: str, unet_subfolder: str | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """unet, scheduler and (when present) vae, text_encoder, tokenizer of a pipeline."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(path)
    except Exception as exc:  # local path missing, hub unreachable, no model_index.json
        where = "directory" if Path(path).exists() else "directory or reachable hub id"
        raise OnestepError(
            f"cannot read a diffusers pipeline at '{path}' ({type(exc).__name__}); "
            f"teacher.path must be a pipeline {where} with model_index.json"
        ) from None
    unet_key = "unet" if "unet" in index else None
    if unet_key is None or "scheduler" not in index:
        found = ", ".join(k for k in index if not k.startswith("_"))
        raise OnestepError(f"pipeline at '{path}' has no unet/scheduler components (found: {found})")
    out = {"unet": _load_component(path, unet_subfolder or "unet", index["unet"], dtype),
           "scheduler": _load_component(path, "scheduler", index["scheduler"])}
    for name in ("vae", "text_encoder", "tokenizer"):
        entry = index.get(name)
        if entry and entry[0] is not None:
            out[name] = _load_component(path, name, entry, dtype if name != "tokenizer" else None)
    return out


class DiffusersTeacher(NetworkTeacher):
    """A frozen diffusers UNet in EDM form, with its conditioning and sample sources."""

    def __init__(self, network: DiffusersDenoiser, vae=None, tokenizer=None, text_encoder=None,
                 prompts: list[str] | None = None, guidance_scale: float = 1.0):
        super().__init__(network)
        self.cond_kind = network.cond_kind
        self.num_classes = int(getattr(network.unet.config, "num_class_embeds", None) or 0)
        self.vae = freeze(vae) if vae is not None else None
        self.tokenizer = tokenizer
        self.text_encoder = freeze(text_encoder) if text_encoder is not None else None
        self.guidance_scale = float(guidance_scale)
        self.prompts = prompts or []
        self.real_source = None  # set by data.attach_real_source
        if self.cond_kind == "text":
            if text_encoder is None or tokenizer is None:
                raise OnestepError("a text-conditional teacher needs text_encoder and tokenizer components")
            if not self.prompts:
                raise OnestepError("config key 'teacher.prompts': a text-conditional teacher needs a prompts file")
            from .pipeline import encode_prompts

            self.register_buffer("prompt_embeds", encode_prompts(tokenizer, text_encoder, self.prompts), persistent=False)
            self.register_buffer("uncond_embeds", encode_prompts(tokenizer, text_encoder, [""]), persistent=False)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    def sample_cond(self, n, rng):
        if self.cond_kind == "class":
            return torch.randint(0, self.num_classes, (n,), generator=rng)
        if self.cond_kind == "text":
            idx = torch.randint(0, len(self.prompts), (n,), generator=rng)
            return self.prompt_embeds.cpu()[idx]
        return None

    def _denoise(self, x, sigma, cond, features):
        w = self.guidance_scale
        if self.cond_kind != "text" or w == 1.0:
            return super()._denoise(x, sigma, cond, features)
        # classifier-free guidance in denoiser space (linear, so equal to eps-space CFG)
        b = x.shape[0]
        uncond = self.uncond_embeds.to(cond.device).expand(b, -1, -1)
        out = self.network(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, uncond]),
                           return_features=features)
        d, feats = out if features else (out, None)
        d_cond, d_uncond = d.float().chunk(2)
        return d_uncond + w * (d_cond - d_uncond), (feats[:b] if feats is not None else None)

    def real_samples(self, n, rng, cond=None):
        if self.real_source is None:
            raise RuntimeError("no real-sample source attached (data.attach_real_source)")
        return self.real_source.draw(n, rng)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (identity for pixel teachers); (B, 3, H, W) fp32."""
        if self.vae is None:
            return x
        return self.vae.decode(x.to(self.vae.dtype) / self.latent_scaling).sample.float()


def read_prompts(path: str | None) -> list[str]:
    if path is None:
        return []
    p = Path(path)
    if not p.is_file():
        raise OnestepError(f"config key 'teacher.prompts': prompts file not found: {path}")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise OnestepError(f"config key 'teacher.prompts': {path} holds no prompts")
    return prompts


def load_diffusers_teacher(config, run_dir=None, device="cpu", progress: bool = True) -> DiffusersTeacher:
    """Load, convert, freeze and (per ``config.attention``) set attention kernels."""
    from .attention import apply_attention
    from .data import attach_real_source

    t = config.teacher
    dtype = DTYPES[t.dtype]
    parts = load_components(t.path, t.subfolder, dtype)
    network = DiffusersDenoiser(parts["unet"], parameterization_of(parts["scheduler"]))
    teacher = DiffusersTeacher(
        network, vae=parts.get("vae"), tokenizer=parts.get("tokenizer"), text_encoder=parts.get("text_encoder"),
        prompts=read_prompts(t.prompts), guidance_scale=t.guidance_scale,
    ).to(device)
    apply_attention([teacher.network], config.attention, device, dtype)
    attach_real_source(teacher, config, run_dir, device, progress)
    return teacher
