"""A diffusers UNet as an EDM-form denoiser ``D(x, sigma, cond) -> x0_hat``.

The only place that knows a network's native parameterisation (docs/design.md section 1):
VP (DDPM/DDIM/Euler schedulers; epsilon, v or sample prediction), EDM
(``EDMEulerScheduler``) and flow matching. A continuous sigma maps to a fractional
timestep by interpolating ``log sigma`` over the scheduler's training table (the same as
``EulerDiscreteScheduler._sigma_to_t``), passed as a float tensor.
"""

from __future__ import annotations

import warnings

import diffusers
import torch

from ..errors import OnestepError, OnestepWarning
from ..portable.edm_form import denoise
from ..portable.prompts import encode_text
from ..portable.scheduler import OneStepScheduler
from .denoiser import Denoiser

VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler",)
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
TRANSFORMER_CLASSES = ("DiTTransformer2DModel", "SD3Transformer2DModel", "PixArtTransformer2DModel",
                       "FluxTransformer2DModel")
NETWORK_CLASSES = UNET_CLASSES + TRANSFORMER_CLASSES
TEXT_CLASSES = ("UNet2DConditionModel", "SD3Transformer2DModel", "PixArtTransformer2DModel", "FluxTransformer2DModel")
PACKED_CLASSES = ("FluxTransformer2DModel",)  # latents packed 2x2 into tokens: no sample_size in the config
DEFAULT_RESOLUTION = 1024  # pixels, for a network without a fixed size (FluxPipeline's default)


class _FeaturesReady(Exception):
    """Raised by the last feature tap's hook of a ``return_features="only"`` call: the rest of
    the network's forward is skipped (caught in ``DiffusersDenoiser.forward``)."""


def _keep(module, features):
    module._onestep_features = features
    if module.__dict__.get("_onestep_stop"):
        raise _FeaturesReady


def _store_mid(module, inputs, output):
    """Forward hook on the mid block: keep its output (B, C, h, w) for a discriminator."""
    _keep(module, output[0] if isinstance(output, tuple) else output)


def _store_down(module, inputs, output):
    """Forward hook on a down block: keep its last state before downsampling (B, C, H, W)."""
    states = output[1]
    _keep(module, states[-2] if getattr(module, "downsamplers", None) else states[-1])


def _store_tokens(module, inputs, output):
    """Forward hook on a transformer block: keep its image tokens (B, N, D); joint blocks (SD3)
    return (text tokens, image tokens)."""
    _keep(module, output[-1] if isinstance(output, tuple) else output)


def _is_fsdp(module: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed
        return False
    return isinstance(module, FSDPModule)


def _tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, D) image tokens of a square patch grid -> (B, D, h, w)."""
    b, n, d = tokens.shape
    side = int(round(n**0.5))
    return tokens.transpose(1, 2).reshape(b, d, side, side)


def parameterization_of(scheduler) -> dict:
    """JSON-able description of a scheduler's parameterisation; one-line errors otherwise."""
    name = type(scheduler).__name__
    cfg = scheduler.config
    pred = cfg.get("prediction_type", "epsilon")
    if name in VP_SCHEDULERS:
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise OnestepError(f"unsupported prediction_type '{pred}' of {name} (expected epsilon, v_prediction or sample)")
        if name == "EulerDiscreteScheduler" and cfg.get("timestep_type", "discrete") != "discrete":
            raise OnestepError("EulerDiscreteScheduler with continuous timesteps is not supported")
        abar = scheduler.alphas_cumprod.double()
        return {"kind": "vp", "prediction_type": pred, "alphas_cumprod": abar.tolist()}
    if name in EDM_SCHEDULERS:
        if cfg.get("sigma_schedule", "karras") != "karras":
            raise OnestepError("EDMEulerScheduler with the exponential sigma schedule is not supported")
        if pred not in ("epsilon", "v_prediction"):
            raise OnestepError(f"unsupported prediction_type '{pred}' of {name}")
        return {"kind": "edm", "prediction_type": pred, "sigma_data": float(cfg.sigma_data),
                "sigma_min": float(cfg.sigma_min), "sigma_max": float(cfg.sigma_max)}
    if name in FLOW_SCHEDULERS:  # a shift (static or dynamic) moves the sampling schedule, not the
        # network's map: at noise level t the network still takes timestep t * num_train_timesteps
        return {"kind": "flow", "prediction_type": "flow", "num_train_timesteps": int(cfg.num_train_timesteps),
                "shift": float(cfg.get("shift", 1.0))}
    known = ", ".join(VP_SCHEDULERS + EDM_SCHEDULERS + FLOW_SCHEDULERS)
    raise OnestepError(f"unsupported scheduler {name} (supported: {known})")


def network_param(unet, scheduler, vae_config=None, resolution: int | None = None,
                  guidance_scale: float = 1.0) -> dict:
    """``parameterization_of(scheduler)`` plus what a packed-latent network (Flux) needs beyond
    its config: ``sample_size`` (the latent side: ``resolution`` pixels over the VAE's factor) and
    ``guidance`` (a guidance-distilled model's guidance input: the teacher's ``guidance_scale``,
    fixed for teacher and student alike; None where the model has no guidance embedding)."""
    param = parameterization_of(scheduler)
    if type(unet).__name__ not in PACKED_CLASSES:
        if resolution is not None:
            raise OnestepError(f"config key 'teacher.resolution': {type(unet).__name__} has a fixed sample size; "
                               f"drop teacher.resolution")
        return param
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1) if vae_config is not None else 8
    pixels = resolution or DEFAULT_RESOLUTION
    if pixels % (2 * factor):
        raise OnestepError(f"config key 'teacher.resolution': {pixels} is not a multiple of {2 * factor} (the VAE's "
                           f"{factor}x times the 2x2 latent packing)")
    param["sample_size"] = pixels // factor
    embeds = bool(getattr(unet.config, "guidance_embeds", False))
    if not embeds and guidance_scale != 1.0:
        raise OnestepError("config key 'teacher.guidance_scale': this Flux model has no guidance embedding (and no "
                           "unconditional branch to guide with here); use 1.0")
    if embeds and guidance_scale == 1.0:
        warnings.warn("teacher.guidance_scale 1.0 is the guidance input of this guidance-distilled Flux model "
                      "(FLUX.1-dev is usually run at 3.5); set it to the value its teacher samples should use",
                      OnestepWarning, stacklevel=3)
    param["guidance"] = float(guidance_scale) if embeds else None
    return param


class DiffusersDenoiser(Denoiser):
    """EDM-form wrapper of a diffusers UNet (``UNet2DModel``, ``UNet2DConditionModel``) or
    transformer (``DiTTransformer2DModel``, ``SD3Transformer2DModel``, ``PixArtTransformer2DModel``);
    ``self.unet`` holds either.

    forward(x (B, C, H, W), sigma (B,), cond) -> x0_hat (B, C, H, W) fp32; cond is class
    labels (B,) long, prompt embeddings (B, L, D), or None. ``return_features=True`` also
    returns the feature taps: ``[mid-block output (B, C', h, w)]`` (``feature_taps = "mid"``) or
    every down block's last state before downsampling, one per resolution, then the mid block
    (``"encoder"``); for transformers the image tokens (as (B, D, h, w) maps) of the middle block,
    or of the blocks at a quarter, half and three quarters of the depth. ``latent``: the samples
    are a VAE's latents.
    """

    def __init__(self, unet: torch.nn.Module, param: dict, latent: bool = False):
        super().__init__()
        self.unet = unet
        self.param = dict(param)
        self.kind = param["kind"]
        self.prediction_type = param["prediction_type"]
        self.sigma_data = float(param.get("sigma_data", 0.5))
        self.is_latent = bool(latent)
        cfg = unet.config
        kind = type(unet).__name__
        if kind in PACKED_CLASSES:  # (B, C, H, W) latents whose 2x2 patches are the tokens
            if "sample_size" not in param:
                raise OnestepError(f"{kind} needs the latent size in its parameterisation (network_param)")
            self.sample_shape = (cfg.in_channels // 4, int(param["sample_size"]), int(param["sample_size"]))
        else:
            size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
            self.sample_shape = (cfg.in_channels, size, size)
        self.guidance = param.get("guidance")
        self.is_transformer = kind in TRANSFORMER_CLASSES
        if kind in TEXT_CLASSES:
            self.cond_kind = "text"
        elif getattr(cfg, "num_class_embeds", None):
            self.cond_kind, self.num_classes = "class", int(cfg.num_class_embeds)
        elif kind == "DiTTransformer2DModel" and getattr(cfg, "num_embeds_ada_norm", None):
            self.cond_kind, self.num_classes = "class", int(cfg.num_embeds_ada_norm)
        if self.kind == "vp":
            abar = torch.tensor(param["alphas_cumprod"], dtype=torch.float64)
            # a plain attribute, not a buffer: it must stay float64 through .float()/.to(dtype)
            self.log_sigmas = ((1 - abar) / abar).sqrt().log()
        if self.is_transformer:
            for block in unet.transformer_blocks:
                block.register_forward_hook(_store_tokens)
        else:
            unet.mid_block.register_forward_hook(_store_mid)
            for block in unet.down_blocks:
                block.register_forward_hook(_store_down)

    def _taps(self) -> list:
        """The modules whose outputs ``feature_taps`` selects."""
        if self.is_transformer:
            blocks = self.unet.transformer_blocks
            n = len(blocks)
            picks = [n // 2] if self.feature_taps == "mid" else sorted({n // 4, n // 2, (3 * n) // 4})
            return [blocks[min(i, n - 1)] for i in picks]
        if self.feature_taps == "encoder":
            return [*self.unet.down_blocks, self.unet.mid_block]
        return [self.unet.mid_block]

    def stops_early(self) -> bool:
        """Not when sharded: FSDP's hooks after a unit's forward must run (they reshard it and set
        up its backward)."""
        return not any(_is_fsdp(m) for m in (self.unet, *self.shard_units()))

    def _all_hooked(self) -> list:
        if self.is_transformer:
            blocks = list(self.unet.transformer_blocks)
            # DiT's output layer reads block 0's embedder outside that block's forward: keep it in the root
            return blocks[1:] if type(self.unet).__name__ == "DiTTransformer2DModel" else blocks
        return [*self.unet.down_blocks, self.unet.mid_block]

    # -- spec (rebuilding without the teacher) ---------------------------------------
    def spec(self) -> dict:
        config = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        return {"type": "diffusers", "unet_class": type(self.unet).__name__,
                "unet_config": config, "param": self.param, "latent": self.is_latent}

    @classmethod
    def from_spec(cls, spec: dict) -> DiffusersDenoiser:
        if spec.get("unet_class") not in NETWORK_CLASSES:
            raise OnestepError(f"unsupported network class {spec.get('unet_class')!r} "
                               f"(supported: {', '.join(NETWORK_CLASSES)})")
        unet_cls = getattr(diffusers, spec["unet_class"])
        config = {k: v for k, v in spec["unet_config"].items() if not k.startswith("_")}
        return cls(unet_cls.from_config(config), spec["param"], latent=spec.get("latent", False))

    def enable_gradient_checkpointing(self, function=None) -> None:
        """``function``: diffusers' ``gradient_checkpointing_func`` (None: its default)."""
        if getattr(self.unet, "_supports_gradient_checkpointing", False):
            self.unet.enable_gradient_checkpointing(function)

    def shard_units(self) -> list[torch.nn.Module]:
        if self.is_transformer:
            blocks = list(self.unet.transformer_blocks) + list(getattr(self.unet, "single_transformer_blocks", []))
            # DiT's output layer reads block 0's embedder outside that block's forward: keep it in the root
            return blocks[1:] if type(self.unet).__name__ == "DiTTransformer2DModel" else blocks
        blocks = [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]
        return [b for b in blocks if b is not None]  # (mid_block_type: null has none)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """Smallest and largest sigma the network was trained on."""
        if self.kind == "vp":
            return float(self.log_sigmas[0].exp()), float(self.log_sigmas[-1].exp())
        if self.kind == "edm":
            return self.param["sigma_min"], self.param["sigma_max"]
        n = self.param["num_train_timesteps"]
        return 1.0 / (n - 1), float(n - 1)  # t in [1/n, 1 - 1/n]

    # -- sigma <-> timestep ----------------------------------------------------------
    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Network time input for sigma (B,): fractional timestep (vp), c_noise (edm), t*T (flow)."""
        s = sigma.double()
        if self.kind == "vp":
            ls = self.log_sigmas.to(s.device)
            x = s.log().clamp(ls[0], ls[-1])
            idx = torch.searchsorted(ls, x).clamp(1, len(ls) - 1)
            lo, hi = ls[idx - 1], ls[idx]
            w = (x - lo) / (hi - lo)
            t = (idx - 1).double() + w
        elif self.kind == "edm":
            t = 0.25 * s.log()
        else:
            t = s / (1 + s) * self.param["num_train_timesteps"]
        return t.float()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of ``sigma_to_t`` (vp: log-linear interpolation of the table)."""
        t = t.double()
        if self.kind == "vp":
            ls = self.log_sigmas.to(t.device)
            lo = t.floor().long().clamp(0, len(ls) - 2)
            w = t - lo.double()
            return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp().float()
        if self.kind == "edm":
            return (4 * t).exp().float()
        u = t / self.param["num_train_timesteps"]
        return (u / (1 - u)).float()

    def forward(self, x, sigma, cond=None, return_features: bool | str = False):
        sigma = sigma.reshape(-1).float()
        if self.guidance is not None:  # a guidance-distilled network's guidance input (Flux-dev)
            cond = {**cond, "guidance": torch.full((len(x),), self.guidance, device=x.device)}
        taps = self._taps()
        # features only: stop after the last tap (the blocks run in the order of _taps)
        last = taps[-1] if return_features == "only" and self.stops_early() else None
        if last is not None:
            last.__dict__["_onestep_stop"] = True
        try:
            d = denoise(self.unet, x, sigma, self.sigma_to_t(sigma), cond,
                        self.kind, self.prediction_type, self.sigma_data)
        except _FeaturesReady:
            d = None
        finally:
            if last is not None:
                last.__dict__.pop("_onestep_stop", None)
        feats = [m.__dict__.get("_onestep_features") for m in taps] if return_features else None
        for m in self._all_hooked():  # drop references either way
            m.__dict__.pop("_onestep_features", None)
        if feats is not None and self.is_transformer:
            feats = [_tokens_to_map(f) for f in feats]
        return (d, feats) if return_features else d

    # -- text conditioning ---------------------------------------------------------------
    def encode_prompts(self, parts: dict, prompts: list[str], vae=None, scheduler=None):
        """(conditioning of ``prompts``, unconditional conditioning) for this text-to-image network,
        through its pipeline's own prompt encoding (``portable.prompts``)."""
        size = tuple(self.sample_shape[-2:])
        if vae is not None:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            size = (size[0] * factor, size[1] * factor)
        return encode_text(self.unet, parts, prompts, size, vae, scheduler)

    # -- export -----------------------------------------------------------------------
    def pipeline_parts(self, sigma_init: float) -> dict:
        timestep_init = float(self.sigma_to_t(torch.tensor([sigma_init], dtype=torch.float32))[0])
        packed = type(self.unet).__name__ in PACKED_CLASSES
        scheduler = OneStepScheduler(sigma_init=float(sigma_init), timestep_init=timestep_init,
                                     parameterization=self.kind, prediction_type=self.prediction_type,
                                     sigma_data=self.sigma_data, sample_size=self.sample_shape[1] if packed else None,
                                     guidance=self.guidance)
        return {"transformer" if self.is_transformer else "unet": self.unet, "scheduler": scheduler}

    def stock_scheduler(self, sigma_init: float):
        """A stock diffusers 1-step scheduler reproducing the generator, or None.

        A VP epsilon/v student at the table's largest sigma is a 1-step sampler at t = T-1:
        ``DDIMScheduler`` with trailing spacing, or ``LCMScheduler`` for text-to-image.
        """
        if self.kind != "vp" or abs(sigma_init - self.sigma_range[1]) > 1e-4 * self.sigma_range[1]:
            return None
        from diffusers import DDIMScheduler, LCMScheduler

        abar = torch.tensor(self.param["alphas_cumprod"], dtype=torch.float64)
        alphas = abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        common = {"trained_betas": (1 - alphas).tolist(), "prediction_type": self.prediction_type,
                  "num_train_timesteps": len(self.log_sigmas), "steps_offset": 1}
        if self.cond_kind == "text":
            return LCMScheduler(**common, set_alpha_to_one=True, clip_sample=False)
        return DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing", clip_sample=False)
