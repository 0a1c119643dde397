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

import contextlib
import json
import os
from pathlib import Path

import torch

from ..core.modules import freeze
from ..core.tensors import cat_cond, map_cond, take_rows, to_device
from ..errors import OnestepError
from ..nets.attention import apply_attention
from ..nets.diffusers_unet import DiffusersDenoiser, network_param
from ..portable.edm_form import decode_latents
from ..portable.integrity import verify_checksums
from ..portable.prompts import TEXT_PARTS
from .base import Teacher

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LIBRARIES = ("diffusers", "transformers")
AUXILIARY = ("vae", *TEXT_PARTS)
WEIGHTLESS = ("scheduler", "tokenizer", "tokenizer_2", "tokenizer_3")  # components without weights


def _component_class(path: str, name: str, entry):
    """The class a ``model_index.json`` entry names, from an allowed library only."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise OnestepError(f"pipeline at '{path}': model_index.json entry '{name}' is not [library, class]")
    library, cls_name = entry
    if library not in LIBRARIES:
        raise OnestepError(f"pipeline at '{path}': component '{name}' names library '{library}'; onestep imports "
                           f"only classes of {' and '.join(LIBRARIES)} (custom code runs only with "
                           f"teacher.trust_remote_code: true)")
    module = __import__(library)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise OnestepError(f"pipeline at '{path}': {library} has no class '{cls_name}' (component '{name}')")
    return cls


def _check_files(path: Path, folder: str, weights: bool) -> None:
    """One-line errors for a missing subfolder or config, and for pickled-only weights."""
    sub = path / folder
    if not sub.is_dir():
        raise OnestepError(f"pipeline at '{path}': subfolder '{folder}' is missing")
    configs = [f for f in ("config.json", "scheduler_config.json", "tokenizer_config.json", "vocab.json")
               if (sub / f).is_file()]
    if not configs:
        raise OnestepError(f"pipeline at '{path}': '{folder}' has no config file")
    for c in configs:
        try:
            json.loads((sub / c).read_text())
        except (ValueError, UnicodeDecodeError):
            raise OnestepError(f"pipeline at '{path}': {folder}/{c} is not valid JSON") from None
    if weights and not list(sub.glob("*.safetensors")):
        pickled = [f.name for f in sub.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
        if pickled:
            raise OnestepError(f"pipeline at '{path}': '{folder}' has only pickled weights ({pickled[0]}); onestep "
                               f"loads safetensors only (convert them with safetensors, e.g. save_pretrained)")
        raise OnestepError(f"pipeline at '{path}': '{folder}' has no weights (*.safetensors)")


def _load_component(path: Path, name: str, entry, dtype=None, folder: str | None = None):
    cls = _component_class(str(path), name, entry)
    folder = folder or name
    weighted = name not in WEIGHTLESS
    _check_files(path, folder, weights=weighted)
    kwargs = {"subfolder": folder}
    if weighted:
        kwargs["use_safetensors"] = True  # never unpickle
        if dtype is not None:
            kwargs["torch_dtype"] = dtype
    try:
        with _quiet(cls):
            return cls.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # torn weights, shape mismatches, wrong configs: one line
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise OnestepError(f"pipeline at '{path}': cannot load '{folder}' ({type(exc).__name__}: {first})") from None


@contextlib.contextmanager
def _quiet(cls):
    """Without transformers' per-component "Loading weights" bars (local reads of a few seconds that
    would otherwise sit above any one-line error)."""
    if not cls.__module__.startswith("transformers"):
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def resolve_pipeline(path: str, download: bool = True) -> Path:
    """A local pipeline directory for ``path``: the directory itself, or a hub id's cached snapshot.
    A hub id that is not cached fails at once where the hub cannot be reached (no 30 s of retries),
    or without trying when ``download`` is False."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise OnestepError(f"teacher.path '{path}' is a file; give a pipeline directory")
        return local
    parts = str(path).split("/")
    if len(parts) != 2 or not all(parts) or str(path).startswith((".", "~")):
        raise OnestepError(f"teacher.path '{path}' does not exist (and is not a hub id like org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if not download:
        raise OnestepError(f"teacher.path '{path}' is not a local directory nor in the Hugging Face cache "
                           f"(nothing is downloaded for an estimate)")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or not _hub_reachable():
        raise OnestepError(f"teacher.path '{path}' is not a local directory, not in the Hugging Face cache, and the "
                           f"hub cannot be reached; download it first or give a local directory")
    try:
        return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as exc:
        raise OnestepError(f"cannot download '{path}' from the hub ({type(exc).__name__})") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def read_index(path) -> dict:
    """A pipeline's ``model_index.json`` as a dict; one-line errors if absent or corrupt."""
    index_file = Path(path) / "model_index.json"
    if not index_file.is_file():
        raise OnestepError(f"'{path}' is not a diffusers pipeline directory (no model_index.json)")
    try:
        index = json.loads(index_file.read_text())
    except (ValueError, UnicodeDecodeError):
        raise OnestepError(f"{index_file} is not valid JSON") from None
    if not isinstance(index, dict):
        raise OnestepError(f"{index_file} is not a JSON object")
    return index


def load_components(path: str, unet_subfolder: str | None = None, dtype: torch.dtype = torch.float32,
                    names: tuple[str, ...] = ("unet", "scheduler", *AUXILIARY), trust_remote_code: bool = False) -> dict:
    """The named components of a pipeline that has them (unet and scheduler are required).

    Only classes of diffusers and transformers are built, from safetensors weights; a pipeline
    whose components name other code loads (through diffusers) only with ``trust_remote_code``.
    """
    local = resolve_pipeline(path)
    index = read_index(local)
    try:  # a directory onestep wrote (a trained teacher, an export) records its weights' sha256
        verify_checksums(local)
    except ValueError as exc:
        raise OnestepError(str(exc)) from None
    denoiser = "transformer" if "transformer" in index and "unet" not in index else "unet"
    if ("unet" in names and denoiser not in index) or ("scheduler" in names and "scheduler" not in index):
        found = ", ".join(k for k in index if not k.startswith("_"))
        raise OnestepError(f"pipeline at '{path}' has no unet or transformer, or no scheduler (found: {found})")
    custom = [n for n in names if isinstance(index.get(n), list) and index[n][0] not in (None, *LIBRARIES)]
    if custom and trust_remote_code:
        return _load_remote(local, names, dtype)
    out = {}
    for name in names:
        entry = index.get(name)
        if name == "unet":  # the denoising network, a UNet or a transformer
            out[name] = _load_component(local, denoiser, index[denoiser], dtype, folder=unet_subfolder or denoiser)
        elif entry and entry[0] is not None:
            out[name] = _load_component(local, name, entry, None if name in WEIGHTLESS else dtype)
    return out


def _load_remote(local: Path, names, dtype) -> dict:
    """teacher.trust_remote_code: let diffusers build the pipeline with the directory's own code."""
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(local, trust_remote_code=True, use_safetensors=True, torch_dtype=dtype)
    except Exception as exc:
        raise OnestepError(f"pipeline at '{local}' (trust_remote_code): cannot load ({type(exc).__name__})") from None
    return {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}


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
    """A frozen diffusers network (UNet or transformer) in EDM form, with its VAE, text encoders,
    prompts and classifier-free guidance."""

    def __init__(self, network: DiffusersDenoiser, vae=None, text_parts: dict | None = None,
                 prompts: list[str] | None = None, guidance_scale: float = 1.0, scheduler=None):
        super().__init__(network)
        self.vae = freeze(vae) if vae is not None else None
        self.text_parts = {k: (freeze(v) if isinstance(v, torch.nn.Module) else v)
                           for k, v in (text_parts or {}).items() if v is not None}
        for name, module in self.text_parts.items():  # registered, so .to(device) moves them
            if isinstance(module, torch.nn.Module):
                self.add_module(name, module)
        self.guidance_scale = float(guidance_scale)
        self.prompts = prompts or []
        self.prompt_cond = self.uncond = None
        if self.cond_kind == "text":
            if "text_encoder" not in self.text_parts or "tokenizer" not in self.text_parts:
                raise OnestepError("a text-conditional teacher needs text_encoder and tokenizer components")
            if not self.prompts:
                raise OnestepError("config key 'teacher.prompts': a text-conditional teacher needs a prompts file")
            self.prompt_cond, self.uncond = network.encode_prompts(self.text_parts, self.prompts, vae, scheduler)
        elif self.cond_kind == "class" and self.guidance_scale != 1.0 and not self.has_null_class:
            raise OnestepError("config key 'teacher.guidance_scale': this class-conditional teacher has no null "
                               "class to guide with; use 1.0")

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """The prompts' embeddings (Stable Diffusion 1.x / 2.x layout)."""
        return self.prompt_cond if torch.is_tensor(self.prompt_cond) else self.prompt_cond["encoder_hidden_states"]

    @property
    def has_null_class(self) -> bool:
        """A label embedding with one more row than classes (DiT's, trained with label dropout)."""
        for m in self.network.modules():
            if isinstance(m, torch.nn.Embedding) and m.num_embeddings == self.num_classes + 1:
                return True
        return False

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    @property
    def num_labels(self) -> int:
        return len(self.prompts) if self.cond_kind == "text" else super().num_labels

    def cond_for(self, labels):
        """Class ids as they are; prompt indices -> the prompts' conditioning on the labels' device."""
        if self.cond_kind == "text":
            return to_device(take_rows(self.prompt_cond, labels.cpu()), labels.device)
        return labels

    def _denoise(self, x, sigma, cond, features):
        w = self.guidance_scale
        if w == 1.0 or self.cond_kind == "none":
            return super()._denoise(x, sigma, cond, features)
        # classifier-free guidance in denoiser space (linear, so equal to eps-space CFG)
        b = x.shape[0]
        if self.cond_kind == "text":
            uncond = map_cond(lambda t: t[:1].expand(b, *t.shape[1:]).to(x.device), self.uncond)
        else:
            uncond = torch.full_like(cond, self.num_classes)  # the null class
        out = self.network(torch.cat([x, x]), torch.cat([sigma, sigma]), cat_cond(cond, uncond),
                           return_features=features)
        d, feats = out if features else (out, None)
        if d is None:  # features only: the network stopped after its last tap
            return None, [f[:b] for f in feats]
        d_cond, d_uncond = d.float().chunk(2)
        return d_uncond + w * (d_cond - d_uncond), ([f[:b] for f in feats] if feats is not None else None)

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self.vae is None:
            return self.sample_shape
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (int(self.vae.config.in_channels), self.sample_shape[1] * factor, self.sample_shape[2] * factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images in [-1, 1] -> latents (the VAE posterior's mean, scaled); identity for pixel teachers."""
        if self.vae is None:
            return images
        device, dtype = next(self.vae.parameters()).device, self.vae.dtype
        out = [self.vae.encode(images[i:i + batch_size].to(device, dtype)).latent_dist.mean.float().cpu()
               for i in range(0, len(images), batch_size)]
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (torch.cat(out) - shift) * self.latent_scaling

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (identity for pixel teachers); (B, 3, H, W) fp32."""
        if self.vae is None:
            return x
        return decode_latents(self.vae, x, self.latent_scaling)


def check_layout(path: str, parts: dict) -> None:
    """Components a network family cannot do without, refused in one line: Flux's T5 encoder."""
    if type(parts.get("unet")).__name__ == "FluxTransformer2DModel" and (
            parts.get("text_encoder_2") is None or parts.get("tokenizer_2") is None):
        raise OnestepError(f"pipeline at '{path}': a Flux pipeline needs its T5 encoder (text_encoder_2 and "
                           f"tokenizer_2); this one has none")


def load_network(path: str, subfolder: str | None = None, dtype: str = "float32", guidance_scale: float = 1.0,
                 resolution: int | None = None, attention: str = "auto", device="cpu",
                 trust_remote_code: bool = False) -> DiffusersDenoiser:
    """The teacher's frozen denoiser alone, built as ``load_diffusers_teacher`` builds it (same
    weights, dtype and parameterisation; no text encoding): what a LoRA run's adapters sit on."""
    torch_dtype = DTYPES[dtype]
    parts = load_components(path, subfolder, torch_dtype, names=("unet", "scheduler"),
                            trust_remote_code=trust_remote_code)
    local = resolve_pipeline(path)
    index = read_index(local)
    present = {n: True for n in ("text_encoder_2", "tokenizer_2") if (index.get(n) or [None])[0] is not None}
    check_layout(path, {**parts, **present})  # (from the index: the text encoders are not loaded)
    vae_config = None
    if (index.get("vae") or [None])[0] is not None:
        try:
            vae_config = json.loads((local / "vae" / "config.json").read_text())
        except (OSError, ValueError):
            raise OnestepError(f"pipeline at '{path}': vae/config.json is missing or not valid JSON") from None
    param = network_param(parts["unet"], parts["scheduler"], vae_config, resolution, guidance_scale)
    network = freeze(DiffusersDenoiser(parts["unet"], param, latent=vae_config is not None)).to(device)
    apply_attention([network], attention, device, torch_dtype)
    return network


def load_diffusers_teacher(path: str, subfolder: str | None = None, dtype: str = "float32",
                           prompts_file: str | None = None, guidance_scale: float = 1.0, attention: str = "auto",
                           device="cpu", trust_remote_code: bool = False,
                           resolution: int | None = None) -> DiffusersTeacher:
    """Load, convert, freeze and set the attention kernels of a diffusers teacher.

    ``guidance_scale``: classifier-free guidance (two passes), or, for a guidance-distilled model
    (Flux-dev), the value of its guidance input (one pass; the generator gets the same input)."""
    torch_dtype = DTYPES[dtype]
    parts = load_components(path, subfolder, torch_dtype, trust_remote_code=trust_remote_code)
    check_layout(path, parts)
    vae = parts.get("vae")
    param = network_param(parts["unet"], parts["scheduler"], dict(vae.config) if vae is not None else None,
                          resolution, guidance_scale)
    network = DiffusersDenoiser(parts["unet"], param, latent="vae" in parts)
    cfg_scale = 1.0 if network.guidance is not None else guidance_scale  # embedded guidance: no second pass
    teacher = DiffusersTeacher(
        network, vae=vae, text_parts={k: parts.get(k) for k in TEXT_PARTS},
        prompts=read_prompts(prompts_file), guidance_scale=cfg_scale, scheduler=parts["scheduler"],
    ).to(device)
    apply_attention([teacher.network], attention, device, torch_dtype)
    return teacher


def skeleton_components(path: str, subfolder: str | None = None) -> dict:
    """A pipeline's weighted components built from their configs alone, on the meta device (no
    weights read: for memory estimates), plus its scheduler; only diffusers/transformers classes."""
    local = resolve_pipeline(path, download=False)
    index = read_index(local)
    denoiser = "transformer" if "transformer" in index and "unet" not in index else "unet"
    if denoiser not in index or "scheduler" not in index:
        raise OnestepError(f"pipeline at '{path}' has no unet or transformer, or no scheduler")
    out = {"scheduler": _load_component(local, "scheduler", index["scheduler"])}
    for name in ("unet", *AUXILIARY):
        key = denoiser if name == "unet" else name
        entry = index.get(key)
        if not entry or entry[0] is None or name in WEIGHTLESS:
            continue
        cls = _component_class(str(local), key, entry)
        folder = (subfolder or key) if name == "unet" else key
        try:
            with torch.device("meta"):
                if entry[0] == "diffusers":
                    out[name] = cls.from_config(cls.load_config(str(local), subfolder=folder))
                else:
                    config = cls.config_class.from_pretrained(str(local), subfolder=folder)
                    out[name] = cls._from_config(config)
        except OnestepError:
            raise
        except Exception as exc:
            raise OnestepError(f"pipeline at '{path}': cannot read the config of '{folder}' "
                               f"({type(exc).__name__})") from None
    return out
