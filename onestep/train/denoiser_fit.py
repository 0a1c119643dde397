"""EDM denoiser training: fits the MLP of analytic teachers and trains the bundled digits teacher.

Loss (Karras et al. 2022, arXiv 2206.00364, Eq. 2 and 8):
``lam(sigma) |D(x0 + sigma n, sigma, c) - target|^2`` with ``target = x0`` (data), or the
exact denoiser ``E[x0 | x_t]`` when the teacher is analytic (same minimiser, no noise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.schedule import ScheduleConfig, sample_sigma
from ..objectives import fake_score_loss
from .ema import EMA, ema_beta

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
    ema = EMA(network, ema_beta(1, ema_halflife_steps)) if ema_halflife_steps > 0 else None
    sigma_data = network.sigma_data
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
            ema.update(network)
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    return (ema.module if ema is not None else network), losses
