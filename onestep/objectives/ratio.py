"""From a discriminator logit to the f-divergence weights the objectives read.

The discriminator's logit estimates ``log r = log p_teacher/q_generator`` at ``(x_t, sigma)``
(a logistic discriminator's optimum). f-distill (arXiv 2502.15681, Sec. 4) stabilises the
weights: clamp the logit, clip ``r``; here ``r`` is also self-normalised per sigma-bin
(``E_q[r] = 1`` holds exactly at every sigma) and the weights are divided by the global-batch
mean of ``h``, which rescales ``f`` by a constant (docs/design.md section 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.schedule import ScheduleConfig, log_sigma_bins
from ..core.schema import key
from ..errors import OnestepError
from .fdiv import FName, FWeights, f_weights


@dataclass(frozen=True)
class RatioParams:
    """How a logit becomes a ratio: clamp, clip, per-sigma-bin normalisation, mean-h normalisation."""

    logit_clip: float = 10.0
    ratio_clip: tuple[float, float] = (0.1, 20.0)
    ratio_bins: int = 8
    normalize_weights: bool = True


@dataclass(frozen=True)
class RatioWeighted:
    """Parameters of the objectives weighted by an f-divergence of a learned ratio (f_distill,
    uni_instruct). Reverse KL (``f: rkl``, ``h = 1``) needs no ratio."""

    f: FName = key("rkl", "the f-divergence D_f(p_teacher || q_generator)")
    f_alpha: float = key(0.5, "exponent of the alpha-divergence (f: alpha)")
    logit_clip: float = key(10.0, "clamp of the discriminator's logit before r = exp(logit)", gt=0)
    ratio_clip: tuple[float, float] = key((0.1, 20.0), "[lo, hi] clip of r", gt=0, length=2)
    ratio_bins: int = key(8, "log-sigma bins in which r is normalised to mean 1 (0: off)", ge=0)
    normalize_weights: bool = key(True, "divide h by its global-batch mean (rescales f)")

    @property
    def needs_ratio(self) -> bool:
        return self.f != "rkl"

    @property
    def ratio(self) -> RatioParams:
        return RatioParams(self.logit_clip, tuple(self.ratio_clip), self.ratio_bins, self.normalize_weights)

    def check(self, prefix: str) -> None:
        lo, hi = self.ratio_clip
        if not lo < hi:
            raise OnestepError(f"config key '{prefix}.ratio_clip': expected [lo, hi] with 0 < lo < hi, got {list(self.ratio_clip)}")
        if self.f != "alpha" and self.f_alpha != 0.5:
            raise OnestepError(f"config key '{prefix}.f_alpha' is only used with {prefix}.f: alpha")
        if self.f == "alpha" and self.f_alpha in (0.0, 1.0):
            raise OnestepError(f"config key '{prefix}.f_alpha': 0 and 1 are the KL limits; use f: rkl or fkl")


AllReduceSum = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def normalise_per_bin(
    r: torch.Tensor, sigma: torch.Tensor, bins: int, schedule: ScheduleConfig, all_reduce_sum: AllReduceSum
) -> torch.Tensor:
    """Divide ``r`` by its mean within each log-sigma bin of the global batch; (B,)."""
    idx = log_sigma_bins(sigma, schedule, bins)
    sums = torch.zeros(bins, device=r.device, dtype=torch.float32).index_add_(0, idx, r.float())
    counts = torch.zeros(bins, device=r.device, dtype=torch.float32).index_add_(0, idx, torch.ones_like(r))
    stats = all_reduce_sum(torch.stack([sums, counts]))
    mean = stats[0] / stats[1].clamp_min(1.0)
    return r / mean[idx].clamp_min(1e-12)


def divergence_weights(
    logit: torch.Tensor,
    sigma: torch.Tensor,
    f: str,
    f_alpha: float,
    p: RatioParams,
    schedule: ScheduleConfig,
    all_reduce_sum: AllReduceSum | None = None,
) -> FWeights:
    """Weights of divergence ``f`` from discriminator logits (B,) at noise levels sigma (B,).

    ``all_reduce_sum`` sums a tensor over ranks (identity on one process) so the bin means
    and the ``mean(h)`` normaliser are those of the global batch.
    """
    reduce = all_reduce_sum or _identity
    raw = logit.detach().float().clamp(-p.logit_clip, p.logit_clip).exp()
    r = raw.clamp(*p.ratio_clip)
    clipped = (raw < p.ratio_clip[0]) | (raw > p.ratio_clip[1])
    if p.ratio_bins > 0:
        r = normalise_per_bin(r, sigma, p.ratio_bins, schedule, reduce)
    w = f_weights(f, r.log(), f_alpha)
    # Where r is clipped, h(clip(r)) is flat in r: its derivative terms vanish.
    zero = torch.zeros_like(w.h)
    w = FWeights(w.h, torch.where(clipped, w.h, w.h_minus_rh), torch.where(clipped, zero, w.rh),
                 torch.where(clipped, zero, w.q))
    if p.normalize_weights:
        stats = reduce(torch.stack([w.h.sum(), torch.tensor(float(len(r)), device=r.device)]))
        w = w.scaled(stats[1] / stats[0].clamp_min(1e-12))
    return w
