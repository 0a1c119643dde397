"""The teacher's multi-step samples in batches: the cache of teacher pairs and the NFE sweeps."""

from __future__ import annotations

import dataclasses

import torch
from tqdm.auto import tqdm

from .core.samplers import edm_sample
from .core.schedule import ScheduleConfig


@torch.no_grad()
def teacher_samples(teacher, noise: torch.Tensor, labels: torch.Tensor | None, schedule: ScheduleConfig,
                    steps: int, batch_size: int, heun: bool = True, device="cpu", progress: bool = False,
                    desc: str = "teacher samples") -> torch.Tensor:
    """EDM Heun (or Euler) ODE solutions from ``sigma_max * noise[i]`` with conditioning
    ``teacher.cond_for(labels[i])``; (n, *sample_shape) fp32 on CPU.

    The schedule is clamped to the sigmas the teacher was trained on.
    """
    lo, hi = teacher.sigma_range
    sched = dataclasses.replace(schedule, sigma_min=max(schedule.sigma_min, lo), sigma_max=min(schedule.sigma_max, hi))
    out = []
    for start in tqdm(range(0, len(noise), batch_size), desc=desc, disable=not progress, leave=False):
        z = noise[start:start + batch_size].to(device)
        cond = teacher.cond_for(labels[start:start + batch_size].to(device)) if labels is not None else None
        out.append(edm_sample(teacher.denoise, z, sched, steps, cond, heun=heun).cpu())
    return torch.cat(out)
