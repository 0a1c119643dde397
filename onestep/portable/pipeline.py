"""OneStepPipeline (a one-step generator) and EDMPipeline (the bundled teacher's sampler) as
diffusers pipelines.

Imports only torch and diffusers (and transformers through diffusers' loading of a text
encoder), plus ``edm_form`` next to it: ``onestep export`` writes both into one ``pipeline.py``
in the exported directory (``onestep.portable.bundle``), so that
``diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` loads the pipeline
without ``onestep`` installed. The generator is ``x_g = D(sigma_init * z, sigma_init, cond)`` in
the EDM denoiser form of ``edm_form``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DiTTransformer2DModel,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import logging

try:  # the text encoders of text-to-image exports; pixel exports load without transformers
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5EncoderModel,
        T5TokenizerFast,
    )
except ImportError:  # pragma: no cover
    CLIPTextModel = CLIPTextModelWithProjection = CLIPTokenizer = T5EncoderModel = T5TokenizerFast = None

from .edm_form import call_unet, decode_latents, denoise, heun_sample, index_seed, karras_sigma
from .integrity import verify_loaded
from .prompts import encode_prompts, encode_text, stock_pipeline_name
from .scheduler import OneStepScheduler

logger = logging.get_logger(__name__)
BUNDLED = False  # True in the single-file copy an export carries (portable.bundle sets it)


def write_remote_code(directory: Path, pipeline_class: str) -> None:
    """Make a saved pipeline directory loadable by plain diffusers (``trust_remote_code=True``):
    ``pipeline.py`` (this code in one file), ``scheduler/onestep_scheduler.py``, and the classes
    named in ``model_index.json``."""
    import inspect
    import json

    if BUNDLED:  # running from an export: copy the files this code was loaded from
        source = Path(inspect.getsourcefile(OneStepPipeline)).read_text()
        scheduler_source = Path(inspect.getsourcefile(OneStepScheduler)).read_text()
    else:  # inside onestep: assemble them
        from onestep.portable import bundle

        source, scheduler_source = bundle(), bundle(("edm_form.py", "scheduler.py"))
    (directory / "pipeline.py").write_text(source)
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = ["pipeline", pipeline_class]
    entry = index.get("scheduler")
    if isinstance(entry, list) and entry[1] == "OneStepScheduler" and (directory / "scheduler").is_dir():
        (directory / "scheduler" / "onestep_scheduler.py").write_text(scheduler_source)
        index["scheduler"] = ["onestep_scheduler", "OneStepScheduler"]
    index_path.write_text(json.dumps(index, indent=2))


def label_list(class_labels, num_classes: int | None) -> list[int]:
    """Class labels as diffusers users pass them (an int, a list or tuple, a tensor or array of
    any shape) as a list of ints, each checked against ``num_classes`` (one-line ``ValueError``)."""
    if torch.is_tensor(class_labels) or hasattr(class_labels, "tolist"):
        class_labels = class_labels.tolist()
    if not isinstance(class_labels, (list, tuple)):
        class_labels = [class_labels]
    flat = []
    for c in class_labels:
        flat += c if isinstance(c, (list, tuple)) else [c]
    try:
        labels = [int(c) for c in flat]
    except (TypeError, ValueError):
        raise ValueError(f"class labels must be integers, got {class_labels!r}") from None
    if any(float(c) != int(c) for c in flat if isinstance(c, float)):
        raise ValueError(f"class labels must be integers, got {class_labels!r}")
    bad = [c for c in labels if num_classes and not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class label {bad[0]} is out of range: this pipeline has classes 0..{num_classes - 1}")
    return labels


class OneStepPipeline(DiffusionPipeline):
    r"""A one-step generator: one network evaluation per image.

    Unconditional, class-conditional (``class_labels``) or text-conditional (``prompt`` /
    ``prompt_embeds``; latent models decode with the VAE). The usual diffusers arguments are
    accepted: ``num_inference_steps`` must be 1; ``guidance_scale`` is ignored (the student was
    distilled from the guided teacher and is guidance-free; ``negative_prompt`` is refused);
    ``height``/``width`` must be the trained size; ``latents`` are unit noise (scaled by the
    scheduler's ``init_noise_sigma``); ``callback_on_step_end`` runs once.

    Components:
        scheduler ([`OneStepScheduler`]): the noise level, time input and parameterisation.
        unet ([`UNet2DModel`] or [`UNet2DConditionModel`]) or transformer ([`DiTTransformer2DModel`],
            [`SD3Transformer2DModel`], [`PixArtTransformer2DModel`]): the generator network.
        vae ([`AutoencoderKL`], optional): decodes latents (latent models).
        text_encoder(_2, _3), tokenizer(_2, _3) (optional): prompts, encoded as the teacher's own
            pipeline encodes them (Stable Diffusion 1.x/2.x, SDXL, SD3, PixArt).

    Noise is drawn with ``generator`` as diffusers does (one generator, or one per image);
    ``index_generators(seed, n)`` gives the per-index generators ``onestep sample`` uses.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->unet->vae"
    _optional_components = ["unet", "transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                            "text_encoder_3", "tokenizer_3"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        scheduler: OneStepScheduler,
        unet: UNet2DModel | UNet2DConditionModel | None = None,
        transformer: DiTTransformer2DModel | SD3Transformer2DModel | PixArtTransformer2DModel | FluxTransformer2DModel
        | None = None,
        vae: AutoencoderKL | None = None,
        text_encoder: CLIPTextModel | CLIPTextModelWithProjection | T5EncoderModel | None = None,
        tokenizer: CLIPTokenizer | T5TokenizerFast | None = None,
        text_encoder_2: CLIPTextModelWithProjection | T5EncoderModel | None = None,
        tokenizer_2: CLIPTokenizer | T5TokenizerFast | None = None,
        text_encoder_3: T5EncoderModel | None = None,
        tokenizer_3: T5TokenizerFast | None = None,
    ):
        super().__init__()
        if (unet is None) == (transformer is None):
            raise ValueError("give the generator network as `unet` or as `transformer` (exactly one)")
        verify_loaded(unet, transformer, vae)  # a directory onestep wrote: its recorded checksums
        self.register_modules(unet=unet, transformer=transformer, scheduler=scheduler, vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)

    @property
    def network(self):
        """The generator network: ``unet`` or ``transformer``."""
        return self.unet if self.unet is not None else self.transformer

    def _text_parts(self) -> dict:
        names = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}

    # -- loading and saving ----------------------------------------------------------------
    @classmethod
    def load_config(cls, *args, **kwargs):
        """An export names its classes as remote code (``["pipeline", "OneStepPipeline"]``) for
        plain diffusers; loading through this class needs none, so read them as ours."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][1]
        if isinstance(config.get("scheduler"), (list, tuple)) and config["scheduler"][1] == "OneStepScheduler":
            config["scheduler"] = [None, None]  # passed in by from_pretrained below
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if "scheduler" not in kwargs:
            kwargs["scheduler"] = OneStepScheduler.from_pretrained(
                pretrained_model_name_or_path, subfolder="scheduler",
                **{k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token") if k in kwargs})
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``DiffusionPipeline.save_pretrained``, made loadable by plain diffusers: the pipeline and
        scheduler code is written next to the weights and named in ``model_index.json``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(Path(save_directory), type(self).__name__)

    # -- the diffusers conventions -----------------------------------------------------------
    @staticmethod
    def index_generators(seed: int, n: int, start: int = 0) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(index_seed(seed, start + i)) for i in range(n)]

    index_seed = staticmethod(index_seed)

    def encode_prompt(self, prompt, device=None, num_images_per_prompt: int = 1, do_classifier_free_guidance=False,
                      negative_prompt=None, prompt_embeds: torch.Tensor | None = None, **kwargs):
        """(prompt_embeds, None): CLIP embeddings repeated per image; the second slot (the negative
        embeddings of guided pipelines) is always None, the student being guidance-free."""
        if negative_prompt is not None or do_classifier_free_guidance:
            raise ValueError("this one-step student is guidance-free: negative_prompt and classifier-free "
                             "guidance do not apply (it was distilled from the guided teacher)")
        parts = self._text_parts()
        layout = stock_pipeline_name(self.network, parts)
        if prompt_embeds is not None and layout is not None:
            raise ValueError(f"pass `prompt` to this {layout.replace('Pipeline', '')} pipeline (its conditioning "
                             f"has several parts: embeddings, pooled projections or masks)")
        if prompt_embeds is None:
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no text encoder: drop `prompt`")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if layout is None:
                prompt_embeds = encode_prompts(self.tokenizer, self.text_encoder, prompts)
            else:
                shape = self._sample_shape(None, None)
                size = (shape[1] * self.vae_scale_factor, shape[2] * self.vae_scale_factor)
                prompt_embeds, _ = encode_text(self.network, parts, prompts, size, self.vae, self.scheduler)
        device = device or self._execution_device

        def repeat(t):
            return t.to(device).repeat_interleave(num_images_per_prompt, dim=0)

        if isinstance(prompt_embeds, dict):
            return {k: repeat(v) for k, v in prompt_embeds.items()}, None
        return repeat(prompt_embeds), None

    def _sample_shape(self, height, width) -> tuple[int, ...]:
        c, size = self.network.config.in_channels, getattr(self.network.config, "sample_size", None)
        if size is None:  # latents packed 2x2 into tokens (Flux): the size is the scheduler's
            c, size = c // 4, self.scheduler.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        trained = (h * self.vae_scale_factor, w * self.vae_scale_factor)
        if (height or trained[0], width or trained[1]) != trained:
            raise ValueError(f"this one-step generator makes {trained[0]}x{trained[1]} images; got height={height}, "
                             f"width={width}")
        return (c, h, w)

    def _conditioning(self, prompt, prompt_embeds, negative_prompt, class_labels, num_images_per_prompt, batch_size,
                      device):
        """(cond or None, number of images)."""
        if prompt is not None or prompt_embeds is not None:
            cond, _ = self.encode_prompt(prompt, device, num_images_per_prompt, negative_prompt=negative_prompt,
                                         prompt_embeds=prompt_embeds)
            first = cond["encoder_hidden_states"] if isinstance(cond, dict) else cond
            return cond, len(first)
        if negative_prompt is not None:
            raise ValueError("negative_prompt needs classifier-free guidance, which this guidance-free student does not use")
        if class_labels is not None:
            config = self.network.config
            num_classes = getattr(config, "num_class_embeds", None) or (
                getattr(config, "num_embeds_ada_norm", None) if self.transformer is not None else None)
            if not num_classes:
                raise ValueError("this pipeline is unconditional: drop `class_labels`")
            labels = label_list(class_labels, num_classes)
            labels = [c for c in labels for _ in range(num_images_per_prompt)]
            return torch.tensor(labels, device=device, dtype=torch.long), len(labels)
        return None, batch_size * num_images_per_prompt

    def generate_latents(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        """``x_g = D(sigma_init z, sigma_init, cond)`` for unit noise z (B, *shape); fp32."""
        sched = self.scheduler
        x = sched.init_noise_sigma * z.float()
        t = torch.full((len(z),), float(sched.timesteps[0]), device=z.device, dtype=torch.float32)
        if sched.config.get("guidance") is not None:  # a guidance-distilled network's fixed guidance input
            cond = {**cond, "guidance": torch.full((len(z),), float(sched.config.guidance), device=z.device)}
        out = call_unet(self.network, sched.scale_model_input(x, t), t, cond)
        return sched.step(out, t, x).prev_sample

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        batch_size: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 1,
        guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        if guidance_scale not in (0.0, 1.0):
            logger.warning(f"guidance_scale={guidance_scale} is ignored: this one-step student is guidance-free")
        self.scheduler.set_timesteps(num_inference_steps)
        shape = self._sample_shape(height, width)
        device = self._execution_device
        cond, n = self._conditioning(prompt, prompt_embeds, negative_prompt, class_labels, num_images_per_prompt,
                                     batch_size, device)
        if latents is not None:
            if tuple(latents.shape) != (n, *shape):
                raise ValueError(f"latents must have shape {(n, *shape)}, got {tuple(latents.shape)}")
            z = latents.to(device)
        else:
            if isinstance(generator, list) and len(generator) != n:
                raise ValueError(f"got {len(generator)} generators for {n} images")
            z = _randn((n, *shape), generator).to(device)
        x = self.generate_latents(z, cond)
        if callback_on_step_end is not None:
            t = self.scheduler.timesteps[0]
            outputs = callback_on_step_end(self, 0, t, {"latents": x})
            x = outputs.pop("latents", x)
        if output_type == "latent":
            images = x
        else:
            if self.vae is not None:
                x = decode_latents(self.vae, x, self.vae.config.scaling_factor)
            images = self.image_processor.postprocess(x.clamp(-1, 1), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _randn(shape, generator) -> torch.Tensor:
    """Unit noise on CPU: one generator for the batch, or one per image (as diffusers' randn_tensor)."""
    if isinstance(generator, list):
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
    return torch.randn(shape, generator=generator)


class EDMPipeline(DiffusionPipeline):
    """Multi-step EDM sampler (Karras et al. 2022, Algorithm 1, Heun) for a UNet with any of the
    parameterisations above; the format of the bundled digits teacher.

    ``EDMPipeline(unet, scheduler)`` where ``scheduler`` is an ``EDMEulerScheduler`` (its
    sigma_min / sigma_max / rho / sigma_data / prediction_type are used).
    """

    def __init__(self, unet, scheduler):
        super().__init__()
        verify_loaded(unet)  # a directory onestep wrote: its recorded checksums
        self.register_modules(unet=unet, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(do_resize=False)

    @classmethod
    def load_config(cls, *args, **kwargs):
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][1]
        return out

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels: list[int] | None = None, num_inference_steps: int = 18,
                 generator=None, output_type: str = "pil", return_dict: bool = True):
        cfg, c = self.scheduler.config, self.unet.config
        device = self.unet.device
        cond = None
        if class_labels is not None:
            cond = torch.tensor(label_list(class_labels, c.num_class_embeds), device=device, dtype=torch.long)
            batch_size = len(cond)
        steps = torch.linspace(0.0, 1.0, num_inference_steps, dtype=torch.float64)
        sigmas = karras_sigma(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).flip(0).tolist() + [0.0]
        z = _randn((batch_size, c.in_channels, c.sample_size, c.sample_size), generator).to(device)

        def D(x_, s):
            sig = torch.full((batch_size,), s, device=device, dtype=torch.float32)
            return denoise(self.unet, x_.float(), sig, 0.25 * sig.log(), cond, "edm", cfg.prediction_type,
                           cfg.sigma_data).double()

        x = heun_sample(D, z, sigmas)
        images = x if output_type == "latent" else self.image_processor.postprocess(x.clamp(-1, 1), output_type=output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
