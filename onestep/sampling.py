"""Samplers: the one-step generator with per-index seeds, and the teacher's multi-step ODE solvers.

Per-index seeds: sample ``i`` of seed ``s`` always uses the noise of
``torch.Generator().manual_seed(index_seed(s, i))``, so results do not depend on batch
size, and diffusers reproduces them with one generator per image
(``OneStepPipeline.index_generators``, which implements the same mapping).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .config import ScheduleConfig
from .schedule import karras_sigmas


def index_seed(seed: int, index: int) -> int:
    """32-bit seed of sample ``index`` (torch's CPU generator keeps 32 bits of a seed): distinct
    for every index of one seed; golden-ratio spacing keeps nearby seeds apart."""
    return (int(seed) * 2654435761 + int(index)) % (2**32)


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
    """One-step samples (num_samples, *shape) fp32 on CPU.

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


Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


@torch.no_grad()
def edm_sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    schedule: ScheduleConfig,
    num_steps: int,
    cond=None,
    heun: bool = True,
) -> torch.Tensor:
    """Deterministic EDM sampler (Karras et al. 2022, arXiv 2206.00364, Algorithm 1).

    x_T: unit-variance noise (B, ...) scaled here by sigma_max. Heun with ``num_steps``
    steps costs ``2 num_steps - 1`` network evaluations (NFE); Euler costs ``num_steps``.
    """
    sigmas = karras_sigmas(num_steps, schedule).flip(0).tolist() + [0.0]
    x = x_T.double() * sigmas[0]
    b = x.shape[0]
    for i in range(num_steps):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoiser(x.float(), torch.full((b,), s_cur, device=x.device), cond).double()) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if heun and s_next > 0:
            d_next = (x_next - denoiser(x_next.float(), torch.full((b,), s_next, device=x.device), cond).double()) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


def heun_steps_for_nfe(nfe: int) -> int:
    """Heun steps giving ``nfe`` evaluations: nfe = 2 n - 1."""
    return (nfe + 1) // 2
