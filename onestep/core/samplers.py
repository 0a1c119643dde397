"""Samplers over denoiser callables: per-index noise, one-step generation, the EDM Heun sampler.

Per-index seeds: sample ``i`` of seed ``s`` always uses the noise of
``torch.Generator().manual_seed(index_seed(s, i))``, so results do not depend on batch
size, and diffusers reproduces them with one generator per image
(``OneStepPipeline.index_generators`` uses the same ``index_seed``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..portable.edm_form import heun_sample, index_seed
from .schedule import ScheduleConfig, karras_sigmas

__all__ = ["Denoiser", "edm_sample", "generate", "heun_steps_for_nfe", "index_seed", "per_index_noise"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def per_index_noise(seed: int, start: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise (count, *shape) fp32 for indices start..start+count-1 of ``seed``."""
    if count == 0:
        return torch.empty(0, *shape)
    return torch.stack([
        torch.randn(shape, generator=torch.Generator().manual_seed(index_seed(seed, start + j)))
        for j in range(count)
    ])


@torch.no_grad()
def generate(
    generator: torch.nn.Module,
    num_samples: int,
    seed: int,
    shape: tuple[int, ...],
    cond_fn: Callable[[int, int], object] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """One-step samples (num_samples, *shape) fp32 on CPU, per-index seeds.

    cond_fn(start, count) -> conditioning for those indices (None: unconditional).
    """
    generator.eval()
    chunks = []
    for start in tqdm(range(0, num_samples, batch_size), disable=not progress, desc="sample"):
        count = min(batch_size, num_samples - start)
        z = per_index_noise(seed, start, count, shape).to(device)
        cond = cond_fn(start, count) if cond_fn is not None else None
        chunks.append(generator(z, cond).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, *shape)


@torch.no_grad()
def edm_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    schedule: ScheduleConfig,
    num_steps: int,
    cond=None,
    heun: bool = True,
) -> torch.Tensor:
    """Deterministic EDM sampler (Karras et al. 2022, arXiv 2206.00364, Algorithm 1) over the
    schedule's Karras grid.

    x_T: unit-variance noise (B, ...) scaled by sigma_max. Heun with ``num_steps`` steps costs
    ``2 num_steps - 1`` network evaluations (NFE); Euler costs ``num_steps``.
    """
    sigmas = karras_sigmas(num_steps, schedule).flip(0).tolist() + [0.0]
    b = x_T.shape[0]

    def denoise(x, s):
        return denoiser(x.float(), torch.full((b,), s, device=x.device), cond).double()

    return heun_sample(denoise, x_T, sigmas, heun)


def heun_steps_for_nfe(nfe: int) -> int:
    """Heun steps giving ``nfe`` evaluations: nfe = 2 n - 1."""
    return (nfe + 1) // 2
