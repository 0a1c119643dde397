"""A diffusers UNet as an EDM-form denoiser ``D(x, sigma, cond) -> x0_hat``.

The only place that knows a network's native parameterisation (docs/design.md section 1):
VP (DDPM/DDIM/Euler schedulers; epsilon, v or sample prediction), EDM
(``EDMEulerScheduler``) and flow matching. A continuous sigma maps to a fractional
timestep by interpolating ``log sigma`` over the scheduler's training table (the same as
``EulerDiscreteScheduler._sigma_to_t``), passed as a float tensor.
"""

from __future__ import annotations

import diffusers
import torch

from ..errors import OnestepError
from ..portable.edm_form import denoise
from ..portable.scheduler import OneStepScheduler
from .denoiser import Denoiser

VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler",)
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


def _store_mid(module, inputs, output):
    """Forward hook on the mid block: keep its output (B, C, h, w) for a discriminator."""
    module._onestep_features = output[0] if isinstance(output, tuple) else output


def _store_down(module, inputs, output):
    """Forward hook on a down block: keep its last state before downsampling (B, C, H, W)."""
    states = output[1]
    module._onestep_features = states[-2] if getattr(module, "downsamplers", None) else states[-1]


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
    if name in FLOW_SCHEDULERS:
        if cfg.get("shift", 1.0) != 1.0 or cfg.get("use_dynamic_shifting", False):
            raise OnestepError("FlowMatchEulerDiscreteScheduler with a shift is not supported")
        return {"kind": "flow", "prediction_type": "flow", "num_train_timesteps": int(cfg.num_train_timesteps)}
    known = ", ".join(VP_SCHEDULERS + EDM_SCHEDULERS + FLOW_SCHEDULERS)
    raise OnestepError(f"unsupported scheduler {name} (supported: {known})")


class DiffusersDenoiser(Denoiser):
    """EDM-form wrapper of a ``UNet2DModel`` / ``UNet2DConditionModel``.

    forward(x (B, C, H, W), sigma (B,), cond) -> x0_hat (B, C, H, W) fp32; cond is class
    labels (B,) long, prompt embeddings (B, L, D), or None. ``return_features=True`` also
    returns the feature taps: ``[mid-block output (B, C', h, w)]`` (``feature_taps = "mid"``) or
    every down block's last state before downsampling, one per resolution, then the mid block
    (``"encoder"``). ``latent``: the samples are a VAE's latents.
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
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.sample_shape = (cfg.in_channels, size, size)
        if type(unet).__name__ == "UNet2DConditionModel":
            self.cond_kind = "text"
        elif getattr(cfg, "num_class_embeds", None):
            self.cond_kind, self.num_classes = "class", int(cfg.num_class_embeds)
        if self.kind == "vp":
            abar = torch.tensor(param["alphas_cumprod"], dtype=torch.float64)
            # a plain attribute, not a buffer: it must stay float64 through .float()/.to(dtype)
            self.log_sigmas = ((1 - abar) / abar).sqrt().log()
        unet.mid_block.register_forward_hook(_store_mid)
        for block in unet.down_blocks:
            block.register_forward_hook(_store_down)

    # -- spec (rebuilding without the teacher) ---------------------------------------
    def spec(self) -> dict:
        config = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        return {"type": "diffusers", "unet_class": type(self.unet).__name__,
                "unet_config": config, "param": self.param, "latent": self.is_latent}

    @classmethod
    def from_spec(cls, spec: dict) -> DiffusersDenoiser:
        if spec.get("unet_class") not in UNET_CLASSES:
            raise OnestepError(f"unsupported network class {spec.get('unet_class')!r} (supported: {', '.join(UNET_CLASSES)})")
        unet_cls = getattr(diffusers, spec["unet_class"])
        config = {k: v for k, v in spec["unet_config"].items() if not k.startswith("_")}
        return cls(unet_cls.from_config(config), spec["param"], latent=spec.get("latent", False))

    def enable_gradient_checkpointing(self) -> None:
        if getattr(self.unet, "_supports_gradient_checkpointing", False):
            self.unet.enable_gradient_checkpointing()

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

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        sigma = sigma.reshape(-1).float()
        d = denoise(self.unet, x, sigma, self.sigma_to_t(sigma), cond,
                    self.kind, self.prediction_type, self.sigma_data)
        taps = [*self.unet.down_blocks, self.unet.mid_block] if self.feature_taps == "encoder" else [self.unet.mid_block]
        feats = [m.__dict__.get("_onestep_features") for m in taps]
        for m in (*self.unet.down_blocks, self.unet.mid_block):  # drop references either way
            m.__dict__.pop("_onestep_features", None)
        return (d, feats) if return_features else d

    # -- export -----------------------------------------------------------------------
    def pipeline_parts(self, sigma_init: float) -> dict:
        timestep_init = float(self.sigma_to_t(torch.tensor([sigma_init], dtype=torch.float32))[0])
        scheduler = OneStepScheduler(sigma_init=float(sigma_init), timestep_init=timestep_init,
                                     parameterization=self.kind, prediction_type=self.prediction_type,
                                     sigma_data=self.sigma_data)
        return {"unet": self.unet, "scheduler": scheduler}

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
