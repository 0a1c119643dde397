"""The critics' step beyond the denoising loss: the discriminator's loss, and its held-out check.

The discriminator reads the features of the frozen teacher or of the fake score at noisy real
and generator samples. Its sigmas come from ``discriminator.sigma_sampler``; real and fake share
sigma and noise (``noise: shared``, SiDA) or draw their own (``independent``, DMD2, FastGen). When
it reads the fake score at the same sigma distribution as the fake-score loss with shared noise,
the fake-score loss's noisy samples are its fakes, so one fake-score pass gives the denoised
output, the fake logits and (in the same batch) the real logits (SiDA). The per-sample loss is
weighted by 1 or EDM's lambda(sigma) (``weighting``) and enters the fake-score optimizer's step
times ``loss_weight``.
"""

from __future__ import annotations

import math

import torch

from ..core.rundir import SPREAD_EDGES
from ..core.schedule import edm_loss_weight
from ..core.tensors import cat_cond, expand, take_rows
from ..objectives import r1_penalty, ratio_logit
from ..objectives.gan import accuracy
from .draws import GlobalDraws
from .plan import CriticPlan


class CriticLoss:
    """``__call__`` -> (the fake score's denoised output at ``x_dn``, the weighted discriminator loss)."""

    def __init__(self, plan: CriticPlan, teacher, nets):
        self.plan, self.teacher, self.nets = plan, teacher, nets
        self.sampler, self.shared = plan.sampler, plan.shared_noise
        self.on_fake_score, self.reuse_dsm = plan.on_fake_score, plan.one_pass

    def reals_apart(self) -> bool:
        """Whether the real rows take their own features-only pass of the fake score (the decoder
        is ~3/4 of a UNet's cost): where the fake score can stop early and is not wrapped for data
        parallelism (DDP expects one forward per backward; it then gets one batched pass)."""
        net = self.nets.fake_score
        return self.on_fake_score and net is self.nets.plain_fake_score and net.stops_early()

    def _weight(self, sigma):
        return edm_loss_weight(sigma, self.teacher.sigma_data) if self.plan.weighting == "edm" else 1.0

    def __call__(self, x_g, x_dn, sigma, noise, cond, draws: GlobalDraws, real_source, stats: dict):
        b, shape = len(x_g), x_g.shape[1:]
        real, cond_real = draws.real(real_source)
        if self.reuse_dsm:
            sigma_f, n_fake, x_fake = sigma, noise, x_dn
        else:
            sigma_f, n_fake = draws.sigma(*self.sampler), draws.randn(*shape)
            x_fake = x_g + expand(sigma_f, x_g) * n_fake
        sigma_r, n_real = (sigma_f, n_fake) if self.shared else (draws.sigma(*self.sampler), draws.randn(*shape))
        x_real = real + expand(sigma_r, real) * n_real
        r1_on = self.plan.r1_weight > 0
        if r1_on:
            x_real = x_real.detach().requires_grad_(True)
        if self.on_fake_score:  # the denoising loss's input, (the fakes,) the reals
            parts = [x_dn] if self.reuse_dsm else [x_dn, x_fake]
            sigmas = [sigma] if self.reuse_dsm else [sigma, sigma_f]
            conds = cond if self.reuse_dsm else cat_cond(cond, cond)
            net = self.nets.fake_score
            if self.reals_apart():
                out, feats = net(torch.cat(parts), torch.cat(sigmas), conds, return_features=True)
                _, feats_real = net(x_real, sigma_r, cond_real, return_features="only")
                feats = [torch.cat([f, r]) for f, r in zip(feats, feats_real)]
            else:
                out, feats = net(torch.cat([*parts, x_real]), torch.cat([*sigmas, sigma_r]),
                                 cat_cond(conds, cond_real), return_features=True)
            D = out[:b].float()
            start = 0 if self.reuse_dsm else b  # where the fakes' rows begin; the reals are the last b
            logits = self.nets.discriminator([torch.cat([f[start:start + b], f[-b:]]) for f in feats])
        else:
            D = self.nets.fake_score(x_dn, sigma, cond).float()
            with torch.enable_grad() if r1_on else torch.no_grad():
                _, feats = self.teacher(torch.cat([x_fake, x_real]), torch.cat([sigma_f, sigma_r]),
                                        cat_cond(cond, cond_real), return_features="only")
            logits = self.nets.discriminator(feats)
        l_fake, l_real = logits[:b], logits[b:]
        bce_fake = torch.nn.functional.softplus(l_fake).flatten(1).mean(1)
        bce_real = torch.nn.functional.softplus(-l_real).flatten(1).mean(1)
        loss = (self._weight(sigma_f) * bce_fake + self._weight(sigma_r) * bce_real).mean()
        if r1_on:
            loss = loss + self.plan.r1_weight * r1_penalty(l_real, x_real).mean()
        stats["loss_disc"] = float((bce_fake + bce_real).detach().mean())
        stats["disc_acc"] = accuracy(l_real.detach(), l_fake.detach())
        return D, self.plan.loss_weight * loss

    @torch.no_grad()
    def evaluate(self, real_holdout, rng: torch.Generator, n: int, objective_sampler, schedule, device) -> dict:
        """Held-out check: accuracy on ``n`` real (never trained on) and ``n`` fresh generator samples at
        the discriminator's sigmas, and the spread (std) of the generator samples' log-ratio
        estimate in log-sigma bins at the objective's sigmas (``SPREAD_EDGES``)."""
        from ..core.schedule import sample_sigma

        draws = GlobalDraws(rng, n, 0, 1, device, schedule)
        gen, disc = self.nets.plain_generator, self.nets.plain_discriminator
        net = self.nets.plain_fake_score if self.on_fake_score else self.teacher

        def logits_at(x, sigma, cond):
            x_t = x + expand(sigma, x) * draws.randn(*x.shape[1:])
            return in_chunks(lambda rows: disc(net(x_t[rows], sigma[rows], take_rows(cond, rows),
                                                   return_features="only")[1]), len(x))

        cond = draws.cond(self.teacher)
        z = draws.randn(*self.teacher.sample_shape)
        x_g = in_chunks(lambda rows: gen(z[rows], take_rows(cond, rows)).float(), n)
        real, cond_real = draws.real(real_holdout)
        sigma = draws.sigma(*self.sampler)
        acc = accuracy(logits_at(real, sigma, cond_real), logits_at(x_g, sigma, cond))
        sigma_o = sample_sigma(objective_sampler[0], n, schedule, rng, objective_sampler[1]).to(device)
        logr = ratio_logit(logits_at(x_g, sigma_o, cond)).float().cpu()
        idx = torch.bucketize(sigma_o.cpu(), torch.tensor(SPREAD_EDGES))
        spread = [float(logr[idx == k].std()) if int((idx == k).sum()) > 1 else math.nan
                  for k in range(len(SPREAD_EDGES) + 1)]
        # accuracy per bin: the same real and generator samples at sigmas spread evenly (in log
        # sigma) over the bins, so that every bin is measured on about n / bins pairs
        sigma_b = binned_sigmas(n, schedule, rng).to(device)
        right = torch.cat([ratio_logit(logits_at(real, sigma_b, cond_real)) > 0,
                           ratio_logit(logits_at(x_g, sigma_b, cond)) < 0]).float().cpu()
        idx_b = torch.bucketize(sigma_b.cpu(), torch.tensor(SPREAD_EDGES)).repeat(2)
        acc_bins = [float(right[idx_b == k].mean()) if int((idx_b == k).sum()) else math.nan
                    for k in range(len(SPREAD_EDGES) + 1)]
        return {"disc_acc_heldout": acc, "disc_acc_bins": acc_bins, "logr_std": spread}


EVAL_CHUNK = 256  # rows per network call of the held-out check (its draws are made whole first)


def in_chunks(fn, n: int, size: int | None = None) -> torch.Tensor:
    """``fn(rows)`` over consecutive slices of ``range(n)``, concatenated along the batch: the
    held-out check on many samples (eval/discriminator_heldout.py) without one batch of them all.
    Each row is computed independently of the others, so the result is the one-batch result."""
    size = size or EVAL_CHUNK
    return torch.cat([fn(slice(i, min(i + size, n))) for i in range(0, n, size)])


def binned_sigmas(n: int, schedule, rng: torch.Generator) -> torch.Tensor:
    """(n,) noise levels, log-uniform within each ``SPREAD_EDGES`` bin (clipped to the schedule's
    range), the bins taking turns: an equal share of ``n`` per bin."""
    edges = [schedule.sigma_min, *(e for e in SPREAD_EDGES if schedule.sigma_min < e < schedule.sigma_max),
             schedule.sigma_max]
    lo, hi = torch.tensor(edges[:-1]).log(), torch.tensor(edges[1:]).log()
    k = torch.arange(n) % len(lo)
    u = torch.rand(n, generator=rng)
    return (lo[k] + u * (hi[k] - lo[k])).exp()
