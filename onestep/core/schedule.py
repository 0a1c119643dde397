"""Noise levels: the schedule constants, sigma samplers, the Karras grid, EDM loss weights.

All in the VE/EDM form ``x_t = x0 + sigma * eps`` (Karras et al. 2022, arXiv 2206.00364).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import OnestepError
from ..portable.edm_form import karras_sigma
from .schema import key


@dataclass
class ScheduleConfig:
    """EDM noise-schedule constants (arXiv 2206.00364, Table 1)."""

    sigma_min: float = key(0.002, "smallest noise level of samplers and sigma bins", gt=0)
    sigma_max: float = key(80.0, "largest noise level (teacher samplers start here)", gt=0)
    rho: float = key(7.0, "Karras schedule exponent", gt=0)
    sigma_data: float = key(0.5, "data std of the EDM loss weight (fake-score loss)", gt=0)
    p_mean: float = key(-1.2, "lognormal sampler: mean of log sigma")
    p_std: float = key(1.2, "lognormal sampler: std of log sigma", gt=0)

    def check(self, prefix: str) -> None:
        if not self.sigma_min < self.sigma_max:
            raise OnestepError(f"config keys '{prefix}.sigma_min' and '{prefix}.sigma_max': need sigma_min < "
                               f"sigma_max, got {self.sigma_min} and {self.sigma_max}")


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (arXiv 2206.00364, Eq. 8); (B,)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(n: int, cfg: ScheduleConfig) -> torch.Tensor:
    """Karras grid of ``n`` sigmas, ascending from sigma_min to sigma_max (Eq. 5); (n,) float64."""
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return _karras(u, cfg)


def _karras(u: torch.Tensor, cfg: ScheduleConfig) -> torch.Tensor:
    return karras_sigma(u, cfg.sigma_min, cfg.sigma_max, cfg.rho)


SAMPLERS = ("lognormal", "karras", "karras_grid")
DEFAULT_RANGES = {"lognormal": None, "karras": (0.0, 0.8), "karras_grid": (20, 980)}


def sample_sigma(
    name: str,
    n: int,
    cfg: ScheduleConfig,
    rng: torch.Generator,
    sigma_range: tuple[float, float] | None = None,
    device: torch.device | str = "cpu",
    stratified: bool = False,
) -> torch.Tensor:
    """Draw ``n`` noise levels; returns (n,) float32.

    - ``lognormal``: ``exp(N(p_mean, p_std^2))`` (EDM training distribution).
    - ``karras``: ``u ~ U(lo, hi)`` mapped through the Karras schedule (SiD: U(0, 0.8)).
    - ``karras_grid``: a 1000-point ascending Karras grid, index uniform in [lo, hi]
      (DMD2: 20..980).

    ``stratified``: the uniform variate behind each draw is ``stratified_uniform`` (one per
    quantile slot of the batch) instead of independent.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sigma sampler '{name}' (known: {', '.join(SAMPLERS)})")
    u = stratified_uniform(n, rng) if stratified else None  # None: independent draws below
    if name == "lognormal":
        if u is None:
            z = torch.randn(n, generator=rng, device=rng.device)
        else:
            z = torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7)).float()
        sigma = (cfg.p_mean + cfg.p_std * z).exp()
    elif name == "karras":
        lo, hi = sigma_range or DEFAULT_RANGES["karras"]
        if u is None:
            u = torch.rand(n, generator=rng, device=rng.device, dtype=torch.float64)
        sigma = _karras(lo + (hi - lo) * u, cfg)
    elif name == "karras_grid":
        lo, hi = sigma_range or DEFAULT_RANGES["karras_grid"]
        grid = karras_sigmas(1000, cfg).to(rng.device)
        if u is None:
            idx = torch.randint(int(lo), int(hi) + 1, (n,), generator=rng, device=rng.device)
        else:
            idx = (int(lo) + (u * (int(hi) - int(lo) + 1)).floor().long()).clamp(int(lo), int(hi))
        sigma = grid[idx]
    return sigma.to(device=device, dtype=torch.float32)


def stratified_uniform(n: int, rng: torch.Generator) -> torch.Tensor:
    """``n`` draws of U(0, 1), one in each interval ``[k/n, (k+1)/n)``, in random order; (n,) float64.

    Each draw is still U(0, 1) (so every expectation is unchanged), but a batch covers the
    range evenly: the variance of a batch mean over sigma drops (stratified sampling).
    """
    perm = torch.randperm(n, generator=rng, device=rng.device)
    jitter = torch.rand(n, generator=rng, device=rng.device, dtype=torch.float64)
    return (perm.double() + jitter) / n


def log_sigma_bins(sigma: torch.Tensor, cfg: ScheduleConfig, bins: int) -> torch.Tensor:
    """Bin index in ``[0, bins)`` of each sigma, uniform in log sigma over [sigma_min, sigma_max].

    Fixed edges (not quantiles) so that per-bin sums can be all-reduced across ranks.
    """
    lo, hi = math.log(cfg.sigma_min), math.log(cfg.sigma_max)
    t = (sigma.log() - lo) / (hi - lo)
    return (t * bins).floor().clamp(0, bins - 1).long()
