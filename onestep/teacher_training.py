"""EDM denoiser training: fits the MLP of analytic teachers and trains the bundled digits teacher.

Loss (Karras et al. 2022, arXiv 2206.00364, Eq. 2 and 8):
``lam(sigma) |D(x0 + sigma n, sigma, c) - target|^2`` with ``target = x0`` (data), or the
exact denoiser ``E[x0 | x_t]`` when the teacher is analytic (same minimiser, no noise).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import ScheduleConfig
from .objectives import fake_score_loss
from .schedule import sample_sigma

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, object]]
Target = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def sample_training_sigma(n: int, schedule: ScheduleConfig, rng: torch.Generator, wide: bool) -> torch.Tensor:
    """EDM lognormal sigmas; with ``wide`` half of them Karras-uniform over the whole range."""
    sigma = sample_sigma("lognormal", n, schedule, rng)
    if wide:
        full = sample_sigma("karras", n, schedule, rng, sigma_range=(0.0, 1.0))
        sigma = torch.where(torch.arange(n) % 2 == 0, sigma, full)
    return sigma


def train_denoiser(
    network: nn.Module,
    draw: Draw,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    schedule: ScheduleConfig,
    seed: int,
    target: Target | None = None,
    wide_sigma: bool = False,
    ema_halflife_steps: float = 0.0,
    progress: bool = True,
    desc: str = "fit denoiser",
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, list[float]]:
    """Train ``network`` in place with Adam; returns (network or its EMA copy, per-step losses).

    draw(n, rng) -> (x0 (n, ...), cond); target(x_t, sigma, cond) -> exact denoiser or None.
    """
    rng = torch.Generator().manual_seed(seed)
    network.to(device).train()
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    ema = copy.deepcopy(network).eval() if ema_halflife_steps > 0 else None
    beta = 0.5 ** (1.0 / ema_halflife_steps) if ema is not None else 0.0
    sigma_data = getattr(network, "sigma_data", schedule.sigma_data)
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        x0, cond = draw(batch_size, rng)
        x0 = x0.to(device)
        sigma = sample_training_sigma(batch_size, schedule, rng, wide_sigma).to(device)
        noise = torch.randn(x0.shape, generator=rng).to(device)
        x_t = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
        goal = x0
        if target is not None:
            with torch.no_grad():
                goal = target(x_t, sigma, cond)
        loss = fake_score_loss(network(x_t, sigma, cond), goal, sigma, sigma_data).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), network.parameters()):
                    pe.lerp_(p, 1 - beta)
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    return (ema if ema is not None else network), losses


def train_teacher(cfg, output, progress: bool = True) -> dict:
    """Train a class-conditional UNet2DModel under the EDM loss on a bundled data set and save
    it as a diffusers pipeline directory (``EDMPipeline``: unet + EDMEulerScheduler).

    Returns {"seconds", "final_loss", "parameters"}.
    """
    import dataclasses
    import json
    import time
    from pathlib import Path

    from diffusers import EDMEulerScheduler, UNet2DModel

    from .config import dump_yaml
    from .data import load_digits
    from .diffusers_denoiser import DiffusersDenoiser, parameterization_of
    from .export import save_self_contained
    from .pipeline import EDMPipeline

    t0 = time.perf_counter()
    x, y = load_digits(size=16 if cfg.dataset == "digits16" else 8)
    unet_kwargs = dataclasses.asdict(cfg.unet)
    unet_kwargs["sample_size"] = x.shape[-1]
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        unet = UNet2DModel(**unet_kwargs)
    s = cfg.schedule
    scheduler = EDMEulerScheduler(sigma_min=s.sigma_min, sigma_max=s.sigma_max, sigma_data=s.sigma_data,
                                  rho=s.rho, prediction_type=cfg.prediction_type)
    network = DiffusersDenoiser(unet, parameterization_of(scheduler))
    labelled = unet_kwargs.get("num_class_embeds")

    def draw(n, rng):
        idx = torch.randint(0, len(x), (n,), generator=rng)
        return x[idx], (y[idx] if labelled else None)

    trained, losses = train_denoiser(network, draw, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                     schedule=s, seed=cfg.seed, ema_halflife_steps=cfg.ema_halflife_steps,
                                     progress=progress, desc="train teacher")
    seconds = time.perf_counter() - t0
    info = {"seconds": round(seconds, 1), "final_loss": sum(losses[-100:]) / min(100, len(losses)),
            "parameters": sum(p.numel() for p in unet.parameters()), "steps": cfg.steps}

    def records(tmp: Path) -> None:
        (tmp / "training.json").write_text(json.dumps(info, indent=1))
        (tmp / "training_config.yaml").write_text(dump_yaml(cfg))

    save_self_contained(EDMPipeline(unet=trained.unet, scheduler=scheduler), output, records)
    return info
