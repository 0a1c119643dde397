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

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from .edm_form import decode_latents, denoise, heun_sample, index_seed, karras_sigma


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """CLIP embeddings (B, L, D) fp32 of ``prompts`` (Stable Diffusion's padding and truncation)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0].float()


class OneStepPipeline(DiffusionPipeline):
    """One network evaluation per image: unconditional, class-conditional (``class_labels``)
    or text-conditional (``prompt``; latent models decode with the VAE).

    Noise is drawn with ``generator`` as diffusers does (one generator, or one per image);
    ``index_generators(seed, n)`` gives the per-index generators ``onestep sample`` uses.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(
        self,
        unet,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        parameterization: str = "vp",
        prediction_type: str = "epsilon",
        sigma_init: float = 2.5,
        timestep_init: float = 0.0,
        sigma_data: float = 0.5,
        latent_scaling: float = 1.0,
        sample_shape: list | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(
            parameterization=parameterization,
            prediction_type=prediction_type,
            sigma_init=float(sigma_init),
            timestep_init=float(timestep_init),
            sigma_data=float(sigma_data),
            latent_scaling=float(latent_scaling),
            sample_shape=list(sample_shape) if sample_shape is not None else None,
        )
        self.image_processor = VaeImageProcessor(do_resize=False)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """An export names this file as remote code (``["pipeline", "OneStepPipeline"]``) for
        plain diffusers; loading through this class needs no remote code, so read it as ours."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][1]
        return out

    index_seed = staticmethod(index_seed)

    @classmethod
    def index_generators(cls, seed: int, n: int, start: int = 0) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(index_seed(seed, start + i)) for i in range(n)]

    def _shape(self) -> tuple[int, ...]:
        if self.config.sample_shape:
            return tuple(self.config.sample_shape)
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    def generate_latents(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        """``x_g = D(sigma_init z, sigma_init, cond)`` for unit noise z (B, *shape)."""
        cfg = self.config
        b = z.shape[0]
        sigma = torch.full((b,), cfg.sigma_init, device=z.device, dtype=torch.float32)
        timestep = torch.full((b,), cfg.timestep_init, device=z.device, dtype=torch.float32)
        return denoise(self.unet, cfg.sigma_init * z, sigma, timestep, cond,
                       cfg.parameterization, cfg.prediction_type, cfg.sigma_data)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: list[int] | None = None,
        prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        device = self.unet.device
        cond = None
        if prompt is not None:
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no text encoder: drop `prompt`")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            embeds = encode_prompts(self.tokenizer, self.text_encoder, prompts)
            cond = embeds.repeat_interleave(num_images_per_prompt, dim=0).to(device)
            n = len(cond)
        elif class_labels is not None:
            labels = [int(c) for c in (class_labels if isinstance(class_labels, (list, tuple)) else [class_labels])]
            num_classes = getattr(self.unet.config, "num_class_embeds", None)
            if not num_classes:
                raise ValueError("this pipeline is unconditional: drop `class_labels`")
            if any(not 0 <= c < num_classes for c in labels):
                raise ValueError(f"class labels must be in [0, {num_classes})")
            labels = [c for c in labels for _ in range(num_images_per_prompt)]
            cond = torch.tensor(labels, device=device, dtype=torch.long)
            n = len(labels)
        else:
            n = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images")
        z = _randn((n, *self._shape()), generator).to(device)
        x = self.generate_latents(z, cond)
        if output_type == "latent":
            images = x
        else:
            if self.vae is not None:
                x = decode_latents(self.vae, x, self.config.latent_scaling)
            images = self.image_processor.postprocess(x.clamp(-1, 1), output_type=output_type)
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
            cond = torch.tensor([int(v) for v in class_labels], device=device, dtype=torch.long)
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
