"""The EDM denoiser form of diffusers networks: torch only, shared by training and every export.

One language everywhere (Karras et al. 2022, arXiv 2206.00364): ``x_t = x0 + sigma * eps`` and a
network is a denoiser ``D(x_t, sigma, cond) -> x0_hat``, fp32 in and out. This module converts a
diffusers network's native parameterisation (VP epsilon / v / sample, EDM, flow matching) to
that form, and holds the Karras grid, the Heun sampler, per-index seeds and the VAE decode.
``onestep export`` inlines it into the exported ``pipeline.py``, so an exported pipeline
computes exactly what ``onestep sample`` computes.
"""

from __future__ import annotations

import torch


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """EDM preconditioning ``D(x) = c_skip x + c_out F(c_in x, c_noise)`` (arXiv 2206.00364,
    Table 1): ``(c_skip, c_out, c_in, c_noise)``, each shaped like ``sigma``."""
    s2, sd2 = sigma**2, sigma_data**2
    return sd2 / (s2 + sd2), sigma * sigma_data / (s2 + sd2).sqrt(), 1.0 / (s2 + sd2).sqrt(), sigma.log() / 4.0


def network_input(x: torch.Tensor, sigma: torch.Tensor, parameterization: str, sigma_data: float) -> torch.Tensor:
    """The network's input for EDM-form ``x`` at noise level ``sigma`` (B,).

    vp: ``x / sqrt(1 + sigma^2)`` (the VP sample, ``abar = 1 / (1 + sigma^2)``);
    edm: ``c_in x = x / sqrt(sigma^2 + sigma_data^2)``; flow: ``x / (1 + sigma)``.
    """
    if parameterization == "vp":
        return x / _bcast((1 + sigma**2).sqrt(), x)
    if parameterization == "edm":
        return x / _bcast((sigma**2 + sigma_data**2).sqrt(), x)
    if parameterization == "flow":
        return x / _bcast(1 + sigma, x)
    raise ValueError(f"unknown parameterization {parameterization!r}")


def denoised_from_output(
    x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor, parameterization: str, prediction_type: str, sigma_data: float
) -> torch.Tensor:
    """``x0_hat`` from the network output (all fp32); the conversions of docs/design.md section 1:

    vp epsilon ``x - sigma eps``; vp v ``x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v``;
    sample ``out``; edm ``c_skip x + c_out F`` (``c_out`` negated for v, as diffusers'
    EDMEulerScheduler); flow ``x / (1 + sigma) - sigma / (1 + sigma) v``.
    """
    s = _bcast(sigma, x)
    if prediction_type == "sample":
        return out
    if parameterization == "vp":
        if prediction_type == "epsilon":
            return x - s * out
        if prediction_type == "v_prediction":
            return x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out
    if parameterization == "edm":
        c_skip, c_out = edm_coefficients(s, sigma_data)[:2]
        if prediction_type == "epsilon":
            return c_skip * x + c_out * out
        if prediction_type == "v_prediction":
            return c_skip * x - c_out * out
    if parameterization == "flow" and prediction_type == "flow":
        return x / (1 + s) - s / (1 + s) * out
    raise ValueError(f"unsupported prediction type {prediction_type!r} for {parameterization!r}")


FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype a module computes in: its parameters' dtype, or, under diffusers' layerwise casting
    (weights stored in float8), the dtype of the parameters it keeps uncast (norms, embeddings)."""
    fallback = None
    for p in module.parameters():
        if p.dtype not in FLOAT8:
            return p.dtype
        fallback = fallback or p.dtype
    return torch.bfloat16 if fallback in FLOAT8 else torch.float32


ADDED_CONDITIONS = ("text_embeds", "time_ids")  # SDXL's added conditioning (added_cond_kwargs)


def call_unet(unet, x_in: torch.Tensor, timestep: torch.Tensor, cond) -> torch.Tensor:
    """One network call (a diffusers UNet or transformer) with its conditioning; fp32 output.

    ``cond``: None, class labels (B,) long, prompt embeddings (B, L, D), or a dict of keyword
    inputs (``encoder_hidden_states``, ``pooled_projections``, ``encoder_attention_mask``, SDXL's
    ``text_embeds`` / ``time_ids``). A network that also predicts its variance (DiT, PixArt:
    twice the input channels) contributes its first half.
    """
    dtype = compute_dtype(unet)
    kwargs = {}
    if isinstance(cond, dict):
        kwargs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in cond.items()}
        added = {k: kwargs.pop(k) for k in ADDED_CONDITIONS if k in kwargs}
        if added:
            kwargs["added_cond_kwargs"] = added
    elif cond is not None:
        if cond.dtype in (torch.int32, torch.int64):
            kwargs["class_labels"] = cond
        else:
            kwargs["encoder_hidden_states"] = cond.to(dtype)
    if type(unet).__name__ == "PixArtTransformer2DModel":
        kwargs.setdefault("added_cond_kwargs", {"resolution": None, "aspect_ratio": None})
    if type(unet).__name__ == "FluxTransformer2DModel":
        return call_flux(unet, x_in, timestep, kwargs, dtype)
    out = unet(x_in.to(dtype), timestep=timestep, **kwargs).sample.float()
    channels = x_in.shape[1]
    return out[:, :channels] if out.shape[1] == 2 * channels else out


def call_flux(unet, x_in: torch.Tensor, timestep: torch.Tensor, kwargs: dict, dtype) -> torch.Tensor:
    """A Flux transformer on latents (B, C, H, W), as ``FluxPipeline`` calls it: the latents packed
    2x2 into tokens (B, HW/4, 4C) with their rotary position ids (``_pack_latents``,
    ``_prepare_latent_image_ids``), zero text ids, the time in [0, 1] (``timestep / 1000``) and,
    for a guidance-distilled model, ``kwargs["guidance"]`` (B,); the output unpacked to (B, C, H, W)."""
    b, c, h, w = x_in.shape
    tokens = x_in.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
    img_ids = torch.zeros(h // 2, w // 2, 3, device=x_in.device)
    img_ids[..., 1] += torch.arange(h // 2, device=x_in.device)[:, None]
    img_ids[..., 2] += torch.arange(w // 2, device=x_in.device)[None, :]
    text = kwargs["encoder_hidden_states"]
    txt_ids = torch.zeros(text.shape[1], 3, device=x_in.device, dtype=dtype)
    guidance = kwargs.pop("guidance", None)
    out = unet(tokens.to(dtype), timestep=(timestep / 1000).to(dtype), img_ids=img_ids.reshape(-1, 3).to(dtype),
               txt_ids=txt_ids, guidance=guidance.float() if guidance is not None else None, **kwargs).sample
    return out.float().reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def denoise(unet, x, sigma, timestep, cond, parameterization: str, prediction_type: str, sigma_data: float):
    """``D(x, sigma, cond)``: EDM-form fp32 in and out; ``timestep`` (B,) is the network's time input."""
    x = x.float()
    out = call_unet(unet, network_input(x, sigma, parameterization, sigma_data), timestep, cond)
    return denoised_from_output(x, sigma, out, parameterization, prediction_type, sigma_data)


def karras_sigma(u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Karras et al. 2022 (arXiv 2206.00364, Eq. 5): ``(smin^(1/rho) + u (smax^(1/rho) - smin^(1/rho)))^rho``
    for ``u`` in [0, 1] (any shape; ascending in ``u``)."""
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + u * (hi - lo)) ** rho


def heun_sample(denoise_fn, x_T: torch.Tensor, sigmas: list[float], heun: bool = True) -> torch.Tensor:
    """Deterministic EDM sampler (arXiv 2206.00364, Algorithm 1), in float64.

    ``sigmas``: descending noise levels ending in 0; ``x_T``: unit noise (B, ...), scaled here
    by ``sigmas[0]``; ``denoise_fn(x float64, sigma float) -> x0_hat float64``. Heun costs
    ``2 n - 1`` evaluations for ``n = len(sigmas) - 1`` steps, Euler (``heun=False``) ``n``.
    Returns float32.
    """
    x = x_T.double() * sigmas[0]
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = (x - denoise_fn(x, s_cur)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if heun and s_next > 0:
            d_next = (x_next - denoise_fn(x_next, s_next)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


def index_seed(seed: int, index: int) -> int:
    """The 32-bit seed of image ``index`` under ``seed`` (torch's CPU generator keeps 32 bits of a
    seed): distinct for every index of one seed; golden-ratio spacing keeps nearby seeds apart."""
    return (int(seed) * 2654435761 + int(index)) % (2**32)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """VAE latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1], fp32 (SD3's VAE also shifts)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return vae.decode((latents / scaling_factor + shift).to(vae.dtype)).sample.float()
