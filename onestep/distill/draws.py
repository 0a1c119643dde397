"""The randomness of one iteration, drawn for the global batch and sliced to this process.

Every random tensor (noise, sigmas, conditioning, real samples, regression pairs) comes from
one seeded CPU ``torch.Generator`` and is drawn for the *global* batch; each process keeps its
rows. So a run's result does not depend on how many processes share the batch, and the
generator's state (checkpointed) makes a resumed run continue bit for bit.
"""

from __future__ import annotations

import torch

from ..core.schedule import ScheduleConfig, sample_sigma
from ..core.tensors import cond_len, take_rows, to_device

SigmaSpec = tuple[str, tuple[float, float] | None]  # (sampler name, range or None)


class GlobalDraws:
    """Global-batch draws from ``rng``, returned as this process's slice on ``device``."""

    def __init__(self, rng: torch.Generator, batch_size: int, rank: int, world: int, device,
                 schedule: ScheduleConfig, stratified: bool = False):
        self.rng, self.batch_size, self.rank, self.world = rng, batch_size, rank, world
        self.device, self.schedule, self.stratified = device, schedule, stratified

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.world

    def rows(self, t):
        """This process's rows of a global-batch tensor or conditioning tree (or None), on the device."""
        if t is None:
            return None
        local = cond_len(t) // self.world
        return to_device(take_rows(t, slice(self.rank * local, (self.rank + 1) * local)), self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal (local batch, *shape)."""
        return self.rows(torch.randn(self.batch_size, *shape, generator=self.rng))

    def sigma(self, name: str, sigma_range=None) -> torch.Tensor:
        """Noise levels (local batch,) from a named sampler (``core.schedule.sample_sigma``)."""
        return self.rows(sample_sigma(name, self.batch_size, self.schedule, self.rng, sigma_range,
                                      stratified=self.stratified))

    def cond(self, teacher):
        """Conditioning (local batch rows) drawn by the teacher, or None."""
        return self.rows(teacher.sample_cond(self.batch_size, self.rng))

    def real(self, source) -> tuple[torch.Tensor, object]:
        """Real samples and their conditioning (local batch rows) from a source's ``draw``."""
        x, cond = source.draw(self.batch_size, self.rng)
        return self.rows(x), self.rows(cond)

    def pairs(self, cache, n: int):
        """This process's rows of ``n`` (global) regression pairs: (z, y, cond)."""
        z, y, cond = cache.draw_pairs(n, self.rng)
        return self.rows(z), self.rows(y), self.rows(cond)
