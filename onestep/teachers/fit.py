"""EDM denoiser training: fits the MLP of analytic teachers and trains teachers (``train-teacher``).

Loss (Karras et al. 2022, arXiv 2206.00364, Eq. 2 and 8):
``lam(sigma) |D(x0 + sigma n, sigma, c) - target|^2`` with ``target = x0`` (data), or the
exact denoiser ``E[x0 | x_t]`` when the teacher is analytic (same minimiser, no noise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.ema import EMA, ema_beta
from ..core.io import pack_optimizer, unpack_module, unpack_optimizer
from ..core.schedule import ScheduleConfig, sample_sigma
from ..objectives import fake_score_loss

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, object]]
Target = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def sample_training_sigma(n: int, schedule: ScheduleConfig, rng: torch.Generator, wide: bool) -> torch.Tensor:
    """EDM lognormal sigmas; with ``wide`` half of them Karras-uniform over the whole range."""
    sigma = sample_sigma("lognormal", n, schedule, rng)
    if wide:
        full = sample_sigma("karras", n, schedule, rng, sigma_range=(0.0, 1.0))
        sigma = torch.where(torch.arange(n) % 2 == 0, sigma, full)
    return sigma


class DenoiserFit:
    """The state of one denoiser's training: the network, Adam, its EMA, the random stream of the
    data, noise and sigma draws, and the step count. ``state()`` / ``load_state()`` make it
    resumable bit for bit (the same steps give the same weights with or without a restart).

    draw(n, rng) -> (x0 (n, ...), cond); target(x_t, sigma, cond) -> exact denoiser or None.
    """

    def __init__(self, network: nn.Module, draw: Draw, *, batch_size: int, lr: float, schedule: ScheduleConfig,
                 seed: int, target: Target | None = None, wide_sigma: bool = False,
                 ema_halflife_steps: float = 0.0, device: torch.device | str = "cpu"):
        self.network, self.draw, self.target = network.to(device).train(), draw, target
        self.batch_size, self.schedule, self.wide_sigma, self.device = batch_size, schedule, wide_sigma, device
        self.rng = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=lr)
        self.ema = EMA(network, ema_beta(1, ema_halflife_steps)) if ema_halflife_steps > 0 else None
        self.step_count = 0

    def step(self) -> float:
        """One Adam step on a fresh batch; returns its loss."""
        x0, cond = self.draw(self.batch_size, self.rng)
        x0 = x0.to(self.device)
        sigma = sample_training_sigma(self.batch_size, self.schedule, self.rng, self.wide_sigma).to(self.device)
        noise = torch.randn(x0.shape, generator=self.rng).to(self.device)
        x_t = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise
        goal = x0
        if self.target is not None:
            with torch.no_grad():
                goal = self.target(x_t, sigma, cond)
        loss = fake_score_loss(self.network(x_t, sigma, cond), goal, sigma, self.network.sigma_data).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.network)
        self.step_count += 1
        return loss.item()

    @property
    def result(self) -> nn.Module:
        """The network to keep: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.network

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able layout) of everything a resume needs."""
        tensors = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        opt_tensors, layout = pack_optimizer("optimizer", self.optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors["rng"] = self.rng.get_state()
        return tensors, {"optimizer": layout, "step": self.step_count}

    def load_state(self, tensors: dict[str, torch.Tensor], layout: dict) -> None:
        unpack_module("network", tensors, self.network)
        if self.ema is not None:
            unpack_module("ema", tensors, self.ema.module)
        self.optimizer.load_state_dict(unpack_optimizer("optimizer", tensors, layout["optimizer"]))
        self.rng.set_state(tensors["rng"])
        self.step_count = int(layout["step"])


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
    """Train ``network`` in place with Adam; returns (network or its EMA copy, per-step losses)."""
    fit = DenoiserFit(network, draw, batch_size=batch_size, lr=lr, schedule=schedule, seed=seed, target=target,
                      wide_sigma=wide_sigma, ema_halflife_steps=ema_halflife_steps, device=device)
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        losses.append(fit.step())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    return fit.result, losses
