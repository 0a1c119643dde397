"""Teachers loaded from diffusers pipelines (directories or hub ids).

Pixel UNets (unconditional or class-conditional) and latent text-to-image UNets
(Stable-Diffusion layout: UNet2DConditionModel + AutoencoderKL + CLIP). Latent teachers
distill in latent space; the VAE only decodes for previews, evaluation and export. The
teacher applies classifier-free guidance (``teacher.guidance_scale``); the generator and
fake score are guidance-free copies of its UNet.

Components are built only from classes of the installed ``diffusers`` and ``transformers``
libraries: a ``model_index.json`` that names any other module is refused, never imported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.modules import freeze
from ..errors import OnestepError
from ..nets.attention import apply_attention
from ..nets.diffusers_unet import DiffusersDenoiser, parameterization_of
from ..portable.edm_form import decode_latents
from ..portable.pipeline import encode_prompts
from .base import Teacher

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LIBRARIES = ("diffusers", "transformers")
AUXILIARY = ("vae", "text_encoder", "tokenizer")


def _component_class(path: str, name: str, entry):
    """The class a ``model_index.json`` entry names, from an allowed library only."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise OnestepError(f"pipeline at '{path}': model_index.json entry '{name}' is not [library, class]")
    library, cls_name = entry
    if library not in LIBRARIES:
        raise OnestepError(f"pipeline at '{path}': component '{name}' names library '{library}'; onestep loads "
                           f"only classes of {' and '.join(LIBRARIES)} (custom code is never imported)")
    module = __import__(library)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise OnestepError(f"pipeline at '{path}': {library} has no class '{cls_name}' (component '{name}')")
    return cls


def _load_component(path: str, name: str, entry, dtype=None):
    cls = _component_class(path, name, entry)
    kwargs = {"subfolder": name}
    if dtype is not None and hasattr(cls, "dtype"):
        kwargs["torch_dtype"] = dtype
    return cls.from_pretrained(path, **kwargs)


def read_index(path: str) -> dict:
    """A pipeline's ``model_index.json`` as a dict; one-line error if absent or unreadable."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(path)
    except Exception as exc:  # local path missing, hub unreachable, no model_index.json
        where = "directory" if Path(path).exists() else "directory or reachable hub id"
        raise OnestepError(
            f"cannot read a diffusers pipeline at '{path}' ({type(exc).__name__}); "
            f"teacher.path must be a pipeline {where} with model_index.json"
        ) from None


def load_components(path: str, unet_subfolder: str | None = None, dtype: torch.dtype = torch.float32,
                    names: tuple[str, ...] = ("unet", "scheduler", *AUXILIARY)) -> dict:
    """The named components of a pipeline that has them (unet and scheduler are required)."""
    index = read_index(path)
    if ("unet" in names and "unet" not in index) or ("scheduler" in names and "scheduler" not in index):
        found = ", ".join(k for k in index if not k.startswith("_"))
        raise OnestepError(f"pipeline at '{path}' has no unet/scheduler components (found: {found})")
    out = {}
    for name in names:
        entry = index.get(name)
        if name == "unet":
            out[name] = _load_component(path, unet_subfolder or "unet", entry, dtype)
        elif entry and entry[0] is not None:
            out[name] = _load_component(path, name, entry, None if name in ("scheduler", "tokenizer") else dtype)
    return out


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


class DiffusersTeacher(Teacher):
    """A frozen diffusers UNet in EDM form, with its VAE, text encoder and prompts."""

    def __init__(self, network: DiffusersDenoiser, vae=None, tokenizer=None, text_encoder=None,
                 prompts: list[str] | None = None, guidance_scale: float = 1.0):
        super().__init__(network)
        self.vae = freeze(vae) if vae is not None else None
        self.tokenizer = tokenizer
        self.text_encoder = freeze(text_encoder) if text_encoder is not None else None
        self.guidance_scale = float(guidance_scale)
        self.prompts = prompts or []
        if self.cond_kind == "text":
            if text_encoder is None or tokenizer is None:
                raise OnestepError("a text-conditional teacher needs text_encoder and tokenizer components")
            if not self.prompts:
                raise OnestepError("config key 'teacher.prompts': a text-conditional teacher needs a prompts file")
            self.register_buffer("prompt_embeds", encode_prompts(tokenizer, text_encoder, self.prompts), persistent=False)
            self.register_buffer("uncond_embeds", encode_prompts(tokenizer, text_encoder, [""]), persistent=False)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    @property
    def num_labels(self) -> int:
        return len(self.prompts) if self.cond_kind == "text" else super().num_labels

    def cond_for(self, labels):
        """Class ids as they are; prompt indices -> prompt embeddings (B, L, D) on the labels' device."""
        if self.cond_kind == "text":
            return self.prompt_embeds.to(labels.device)[labels]
        return labels

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

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (identity for pixel teachers); (B, 3, H, W) fp32."""
        if self.vae is None:
            return x
        return decode_latents(self.vae, x, self.latent_scaling)


def load_diffusers_teacher(path: str, subfolder: str | None = None, dtype: str = "float32",
                           prompts_file: str | None = None, guidance_scale: float = 1.0, attention: str = "auto",
                           device="cpu") -> DiffusersTeacher:
    """Load, convert, freeze and set the attention kernels of a diffusers teacher."""
    torch_dtype = DTYPES[dtype]
    parts = load_components(path, subfolder, torch_dtype)
    network = DiffusersDenoiser(parts["unet"], parameterization_of(parts["scheduler"]), latent="vae" in parts)
    teacher = DiffusersTeacher(
        network, vae=parts.get("vae"), tokenizer=parts.get("tokenizer"), text_encoder=parts.get("text_encoder"),
        prompts=read_prompts(prompts_file), guidance_scale=guidance_scale,
    ).to(device)
    apply_attention([teacher.network], attention, device, torch_dtype)
    return teacher
