"""The distillation trainer: the one place with optimizers, accelerate, AMP, EMA and the F:G schedule.

One iteration (DESIGN.md section 4):
``z -> generator -> x_g -> sigma, x_t -> teacher / fake_score (grad per grad_through)
-> objective -> generator step``, then ``x_g.detach() -> fake_score (+ head) step``,
repeated ``fake_steps_per_gen`` times (later repeats draw fresh generator samples).

Randomness comes from one CPU ``torch.Generator`` seeded by ``train.seed``; every random
tensor is drawn for the *global* batch and each process takes its slice, so a run's
result does not depend on how many processes share the batch. Its state is checkpointed,
and a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from . import config as config_mod
from .allocator import retain_freed_memory
from .checkpoint import (
    atomic_save,
    atomic_write_text,
    checkpoint_path,
    latest_checkpoint,
    load_safetensors,
    pack_module,
    pack_optimizer,
    prune_checkpoints,
    restore_rng,
    rng_tensors,
    unpack_module,
    unpack_optimizer,
)
from .data import pair_source
from .errors import OnestepError
from .fake_score import FakeScore
from .generator import OneStepGenerator
from .heads import DiscriminatorHead, generator_gan_loss, head_loss, r1_penalty
from .networks import NETWORK_FILE, network_spec
from .objectives import (
    ObjectiveInputs,
    divergence_weights,
    f_weights,
    fake_score_loss,
    registry,
    regression_loss,
)
from .objectives.common import expand
from .schedule import sample_sigma
from .teacher import Teacher, load_teacher

# Config keys that may differ between a run and its resumption.
RESUMABLE_CHANGES = {"train.steps", "train.checkpoint_every", "train.log_every", "train.progress", "train.keep_checkpoints",
                     "train.retain_freed_memory"}


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Temporarily stop gradients into the parameters of ``modules`` (not through their inputs)."""
    saved = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def enable_gradient_checkpointing(*networks: nn.Module) -> None:
    """Activation checkpointing in every diffusers UNet among ``networks`` (others: unchanged)."""
    for net in networks:
        unet = getattr(net, "unet", None)
        if unet is not None and getattr(unet, "_supports_gradient_checkpointing", False):
            unet.enable_gradient_checkpointing()


def _finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


class Trainer:
    """Holds all training state of one distillation run (see module docstring)."""

    def __init__(self, config: config_mod.Config, run_dir: str | Path, teacher: Teacher | None = None):
        self.cfg = config
        self.run_dir = Path(run_dir)
        tr = config.train
        self.acc = Accelerator(
            mixed_precision=tr.mixed_precision,
            gradient_accumulation_steps=tr.grad_accum,
            cpu=not torch.cuda.is_available(),
        )
        self.device = self.acc.device
        if self.device.type == "cpu" and tr.retain_freed_memory:
            retain_freed_memory()
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if tr.batch_size % self.world:
            raise OnestepError(
                f"config key 'train.batch_size': {tr.batch_size} is not divisible by {self.world} processes"
            )
        self.local_batch = tr.batch_size // self.world
        self.use_regression = config.regression.weight > 0
        if self.use_regression and config.regression.batch_size % self.world:
            raise OnestepError(
                f"config key 'regression.batch_size': {config.regression.batch_size} is not divisible by "
                f"{self.world} processes"
            )
        set_seed(tr.seed)
        self.spec, self.params = registry.resolve(config.objective)
        if self.spec.requires_gan and config.gan.weight <= 0:
            raise OnestepError(f"objective '{self.spec.name}' needs the GAN term: set gan.weight > 0 (e.g. 1e-2)")
        self.sigma_sampler = config.objective.sigma_sampler or self.spec.sigma_sampler
        self.sigma_range = tuple(config.objective.sigma_range) if config.objective.sigma_range else None
        gan = config.gan
        # the GAN term's own noise levels (None: it reads the objective's x_t)
        self.gan_sigma = (gan.sigma_sampler, tuple(gan.sigma_range) if gan.sigma_range else None) \
            if gan.sigma_sampler else None
        if self.gan_sigma is not None and self.spec.needs_ratio(self.params):
            raise OnestepError(
                f"config key 'gan.sigma_sampler': objective.f={self.params.f} reads the density ratio from "
                f"the same head at the objective's sigmas; drop gan.sigma_sampler or use f: rkl"
            )
        warmup = config.objective.ratio_warmup
        self.ratio_warmup = warmup if warmup is not None else tr.steps // 10

        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        self.teacher = teacher if teacher is not None else load_teacher(
            config, self.run_dir, self.device, progress=tr.progress and self.acc.is_main_process
        )
        self.teacher.to(self.device)
        self.teacher_fingerprint = self._fingerprint(self.teacher)
        self.pairs = None
        if self.use_regression:
            self.pairs = pair_source(self.teacher, config, self.run_dir, self.device,
                                     progress=tr.progress and self.acc.is_main_process)
        self.sigma_data = getattr(self.teacher.network, "sigma_data", config.schedule.sigma_data)

        # Trainable networks start from the teacher's weights (generator, fake score).
        generator = OneStepGenerator(self.teacher.network, config.generator.sigma_init)
        fake = FakeScore(self.teacher.network)
        self.use_ratio = self.spec.needs_ratio(self.params)
        self.use_gan = config.gan.weight > 0
        self.head_features = config.gan.features if config.gan.features else self.spec.gan_features
        head = None
        if self.use_ratio or self.use_gan:
            head = DiscriminatorHead(self._feature_shape(), hidden=config.gan.hidden)
        if tr.gradient_checkpointing:
            enable_gradient_checkpointing(generator.network, fake.network, self.teacher.network)
        opt_cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
        betas = tuple(float(b) for b in tr.betas)
        # the fused Adam kernel (CPU and CUDA) instead of torch's default per-tensor loop on CPU:
        # 3 ms against 27 ms per step for the digits UNet's 0.7M parameters (eval/bench_step.py)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {"foreach": True}
        opt_kw = {"betas": betas, "weight_decay": tr.weight_decay, **fused}
        opt_g = opt_cls(generator.parameters(), lr=tr.lr_generator, **opt_kw)
        groups = [{"params": list(fake.parameters()), "lr": tr.lr_fake}]
        if head is not None:
            groups.append({"params": list(head.parameters()), "lr": tr.lr_head or tr.lr_fake})
        opt_f = opt_cls(groups, lr=tr.lr_fake, **opt_kw)
        if head is not None:
            generator, fake, head, opt_g, opt_f = self.acc.prepare(generator, fake, head, opt_g, opt_f)
        else:
            generator, fake, opt_g, opt_f = self.acc.prepare(generator, fake, opt_g, opt_f)
        self.generator, self.fake, self.head = generator, fake, head
        self.opt_g, self.opt_f = opt_g, opt_f
        self.ema = None
        if tr.ema_halflife_kimg > 0:
            self.ema = copy.deepcopy(self.acc.unwrap_model(generator)).eval().requires_grad_(False)
            self.ema_beta = 0.5 ** (tr.batch_size / (tr.ema_halflife_kimg * 1000.0))
        self.rng = torch.Generator().manual_seed(tr.seed)
        self._param_cache: dict[tuple, list[torch.Tensor]] = {}
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = {"generator": 0, "fake": 0}  # consecutive skipped steps per network
        self.overflow_total = 0

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _fingerprint(module: nn.Module) -> float:
        with torch.no_grad():
            return float(sum(p.double().abs().sum() for p in module.parameters()))

    def _feature_shape(self) -> tuple[int, ...]:
        x = torch.zeros(1, *self.teacher.sample_shape, device=self.device)
        sigma = torch.ones(1, device=self.device)
        cond = self.teacher.sample_cond(1, torch.Generator().manual_seed(0))
        with torch.no_grad():
            _, feats = self.teacher.network(x, sigma, self._to_device(cond), return_features=True)
        return tuple(feats.shape[1:])

    def _to_device(self, cond):
        if cond is None:
            return None
        if torch.is_tensor(cond):
            return cond.to(self.device)
        return type(cond)(c.to(self.device) if torch.is_tensor(c) else c for c in cond)

    def _slice(self, t):
        """This process's rows of a global-batch tensor (or tuple of them)."""
        if t is None:
            return None
        local = (len(t) if torch.is_tensor(t) else len(t[0])) // self.world
        lo, hi = self.rank * local, (self.rank + 1) * local
        if torch.is_tensor(t):
            return t[lo:hi].to(self.device)
        return type(t)(c[lo:hi].to(self.device) if torch.is_tensor(c) else c for c in t)

    def _randn(self, *shape) -> torch.Tensor:
        """Standard normal for the global batch, sliced to this process."""
        return self._slice(torch.randn(self.cfg.train.batch_size, *shape, generator=self.rng))

    def _sigma(self, name: str, sigma_range=None) -> torch.Tensor:
        return self._slice(
            sample_sigma(name, self.cfg.train.batch_size, self.cfg.schedule, self.rng, sigma_range,
                         stratified=self.cfg.objective.stratified_sigma)
        )

    def _cond(self):
        return self._slice(self.teacher.sample_cond(self.cfg.train.batch_size, self.rng))

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        return self.acc.reduce(t.clone(), reduction="sum")

    # ------------------------------------------------------------------ one iteration

    def generator_step(self) -> dict:
        """One generator update (accumulated over ``grad_accum`` micro-batches)."""
        cfg, shape = self.cfg, self.teacher.sample_shape
        through = self.spec.grad_through
        fake_plain = self.acc.unwrap_model(self.fake)
        head_plain = self.acc.unwrap_model(self.head) if self.head is not None else None
        stats: dict[str, float] = {}
        for _ in range(cfg.train.grad_accum):
            # frozen() spans the backward pass too: activation checkpointing recomputes the
            # forward during backward and must see the same requires_grad flags
            with self.acc.accumulate(self.generator, self.fake), frozen(fake_plain, head_plain):
                cond = self._cond()
                z = self._randn(*shape)
                sigma = self._sigma(self.sigma_sampler, self.sigma_range)
                noise = self._randn(*shape)
                pairs = self._draw_pairs() if self.use_regression else None
                with self.acc.autocast():
                    x_g, x_pair = self._generate(z, cond, pairs)
                    x_t = x_g + expand(sigma, x_g) * noise
                    # the head reads features at x_t for the ratio, and for the GAN term unless
                    # that has its own sigmas (gan.sigma_sampler)
                    gan_at_xt = self.use_gan and self.gan_sigma is None
                    tap = self.head_features if (gan_at_xt or self.use_ratio) else None
                    Dr, feats_r = self._denoise("teacher", x_t, sigma, cond, fake_plain,
                                                grad="teacher" in through or (gan_at_xt and tap == "teacher"),
                                                features=tap == "teacher")
                    Df, feats_f = self._denoise("fake_score", x_t, sigma, cond, fake_plain,
                                                grad="fake_score" in through or (gan_at_xt and tap == "fake_score"),
                                                features=tap == "fake_score")
                    logit = None
                    if tap is not None:
                        feats = feats_r if tap == "teacher" else feats_f
                        logit = head_plain(feats if gan_at_xt else feats.detach(), sigma)
                    logit_gan = logit if gan_at_xt else self._gan_logit(x_g, cond, fake_plain, head_plain)
                weights = self._weights(logit, sigma)
                inputs = ObjectiveInputs(
                    x_g=x_g,
                    sigma=sigma,
                    Dr=Dr if "teacher" in through else Dr.detach(),
                    Df=Df if "fake_score" in through else Df.detach(),
                    weights=weights,
                )
                loss = self.spec.fn(inputs, self.params).mean()
                total = loss + self._added_terms(logit_gan, x_pair, pairs, stats)
                ok = self._backward_and_step(total, self.generator, self.opt_g, "generator", stats)
                if ok and self.acc.sync_gradients and self.ema is not None:
                    self._update_ema()
        stats["loss_g"] = loss.item()
        if weights is not None:
            stats["h_max"] = float(weights.h.max())
        self._last_x_g = (x_g.detach(), cond)
        return stats

    def _draw_pairs(self):
        """This process's slice of ``regression.batch_size`` teacher pairs: (z, y, cond)."""
        z, y, cond = self.pairs.draw_pairs(self.cfg.regression.batch_size, self.rng)
        return self._slice(z), self._slice(y), self._slice(cond)

    def _generate(self, z, cond, pairs):
        """``x_g = G(z)`` (B, ...) and, with regression pairs, ``G(z_pair)`` from the same call."""
        if pairs is None:
            return self.generator(z, cond).float(), None
        z_pair, _, cond_pair = pairs
        x_all = self.generator(torch.cat([z, z_pair]), cat_cond(cond, cond_pair)).float()
        return x_all[: len(z)], x_all[len(z):]

    def _gan_logit(self, x_g, cond, fake_plain, head_plain):
        """The head's logit at ``x_g`` noised to the GAN's own sigmas (None without a GAN term)."""
        if not self.use_gan:
            return None
        sigma = self._sigma(*self.gan_sigma)
        x_gan = x_g + expand(sigma, x_g) * self._randn(*x_g.shape[1:])
        _, feats = self._denoise(self.head_features, x_gan, sigma, cond, fake_plain, grad=True, features=True)
        return head_plain(feats, sigma)

    def _weights(self, logit, sigma):
        """f-divergence weights from the head's logit (reverse KL during the warm-up); None without a ratio."""
        if not self.use_ratio:
            return None
        if self.step < self.ratio_warmup:
            return f_weights("rkl", torch.zeros_like(sigma))
        return divergence_weights(logit.detach(), sigma, self.params.f, self.params.f_alpha, self.params.ratio,
                                  self.cfg.schedule, self._all_reduce_sum)

    def _added_terms(self, logit_gan, x_pair, pairs, stats):
        """``gan.weight`` x GAN term + ``regression.weight`` x regression term (0 when both are off)."""
        total = 0.0
        if self.use_gan:
            gan = generator_gan_loss(logit_gan).mean()
            total = total + self.cfg.gan.weight * gan
            stats["loss_gan"] = gan.item()
        if self.use_regression:
            reg = regression_loss(x_pair, pairs[1]).mean()
            total = total + self.cfg.regression.weight * reg
            stats["loss_reg"] = reg.item()
        return total

    def _denoise(self, source, x_t, sigma, cond, fake_plain, grad: bool, features: bool):
        net = self.teacher if source == "teacher" else fake_plain
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            x_in = x_t if grad else x_t.detach()
            if features:
                d, f = net(x_in, sigma, cond, return_features=True)
                return d.float(), f
            return net(x_in, sigma, cond).float(), None

    def fake_step(self, reuse: bool) -> dict:
        """One fake-score (+ head) update on generator samples (``reuse``: the last x_g)."""
        cfg, shape = self.cfg, self.teacher.sample_shape
        sd = self.sigma_data
        stats: dict[str, float] = {}
        for micro in range(cfg.train.grad_accum):
            with self.acc.accumulate(self.generator, self.fake):
                if reuse and micro == cfg.train.grad_accum - 1:
                    x_g, cond = self._last_x_g
                else:
                    cond = self._cond()
                    z = self._randn(*shape)
                    with torch.no_grad(), self.acc.autocast():
                        x_g = self.acc.unwrap_model(self.generator)(z, cond).float()
                if cfg.objective.fake_sigma_sampler == "generator":
                    sigma = self._sigma(self.sigma_sampler, self.sigma_range)
                else:
                    sigma = self._sigma("lognormal")
                noise = self._randn(*shape)
                x_dn = x_g + expand(sigma, x_g) * noise
                head_terms = None
                with self.acc.autocast():
                    if self.head is not None:
                        head_terms = self._head_inputs(x_g, cond)
                    if self.head is not None and self.head_features == "fake_score":
                        x_h, sigma_h, cond_h = head_terms[:3]
                        batch = torch.cat([x_dn, x_h])
                        d_all, feats = self.fake(batch, torch.cat([sigma, sigma_h]), cat_cond(cond, cond_h), return_features=True)
                        D = d_all[: len(x_dn)].float()
                        feats = feats[len(x_dn):]
                    else:
                        D = self.fake(x_dn, sigma, cond).float()
                        feats = None
                    loss_f = fake_score_loss(D, x_g, sigma, sd).mean()
                    total = loss_f
                    if self.head is not None:
                        loss_h, r1 = self._head_loss(head_terms, feats)
                        total = total + cfg.gan.head_weight * (loss_h + cfg.gan.r1_weight * r1)
                        stats["loss_head"] = loss_h.item()
                self._backward_and_step(total, self.fake, self.opt_f, "fake", stats, extra=self.head)
        stats["loss_f"] = loss_f.item()
        return stats

    def _head_inputs(self, x_g, cond):
        """Noised fake and real samples at the head's sigmas (the objective's unless
        ``gan.sigma_sampler``), stacked: (x (2B), sigma (2B), cond)."""
        b = x_g.shape[0]
        sigma = self._sigma(*(self.gan_sigma or (self.sigma_sampler, self.sigma_range)))
        real, cond_real = self.teacher.real_samples(self.cfg.train.batch_size, self.rng, None), None
        if isinstance(real, tuple):
            real, cond_real = real
        real, cond_real = self._slice(real), self._slice(cond_real)
        n_fake = self._randn(*x_g.shape[1:])
        n_real = self._randn(*x_g.shape[1:])
        x_fake = x_g + expand(sigma, x_g) * n_fake
        x_real = real + expand(sigma, real) * n_real
        if self.cfg.gan.r1_weight > 0:
            x_real = x_real.detach().requires_grad_(True)
        return torch.cat([x_fake, x_real]), torch.cat([sigma, sigma]), cat_cond(cond, cond_real), b, x_real

    def _head_loss(self, head_terms, feats):
        """Logistic head loss (+ R1 on the real side); feats None: read the frozen teacher's."""
        x_h, sigma_h, cond_h, b, x_real = head_terms
        r1_on = self.cfg.gan.r1_weight > 0
        if feats is None:
            with contextlib.nullcontext() if r1_on else torch.no_grad():
                _, feats = self.teacher(x_h, sigma_h, cond_h, return_features=True)
        logits = self.head(feats, sigma_h)
        loss = head_loss(logits[b:], logits[:b]).mean()
        r1 = r1_penalty(logits[b:], x_real).mean() if r1_on else torch.zeros((), device=self.device)
        return loss, r1

    def _backward_and_step(self, loss, module, optimizer, name, stats, extra=None) -> bool:
        """Backward, clip, step; a non-finite loss or gradient skips the step (counted)."""
        tr = self.cfg.train
        params = self._param_list(module, extra)
        if not _finite(loss):
            optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(name, "loss")
            return False
        self.acc.backward(loss)
        if not self.acc.sync_gradients:
            return True
        max_norm = tr.grad_clip if tr.grad_clip > 0 else float("inf")
        norm = self.acc.clip_grad_norm_(params, max_norm)
        stats[f"grad_norm_{name}"] = float(norm)
        if not math.isfinite(float(norm)):
            if tr.mixed_precision == "fp16":  # the loss scaler skips this step and lowers its scale
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.overflow_total += 1
                return False
            optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(name, "gradient")
            return False
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak[name] = 0
        return True

    def _count_nonfinite(self, name: str, what: str) -> None:
        self.nonfinite_total += 1
        self.nonfinite_streak[name] += 1
        if self.nonfinite_streak[name] >= self.cfg.train.max_nonfinite:
            last = latest_checkpoint(self.run_dir)
            raise OnestepError(
                f"{self.nonfinite_streak[name]} non-finite steps in a row (last: {name} {what} at step "
                f"{self.step}); aborted. Last good checkpoint: {last or 'none'}. Lower the learning "
                f"rates or use train.mixed_precision=no"
            )

    def _param_list(self, *modules) -> list[torch.Tensor]:
        """The parameters of ``modules`` (None skipped), listed once and cached."""
        key = tuple(id(m) for m in modules)
        if key not in self._param_cache:
            self._param_cache[key] = [p for m in modules if m is not None for p in m.parameters()]
        return self._param_cache[key]

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema = self._param_list(self.ema)
        live = self._param_list(self.acc.unwrap_model(self.generator))
        torch._foreach_lerp_(ema, live, 1.0 - self.ema_beta)

    def _set_generator_lr(self) -> float:
        """Generator learning rate at ``self.step`` (a function of the step: resumes exactly)."""
        tr = self.cfg.train
        lr = tr.lr_generator
        if tr.lr_decay == "cosine":
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(self.step / tr.steps, 1.0)))
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        return lr

    def iteration(self) -> dict:
        lr = self._set_generator_lr()
        stats = self.generator_step()
        stats["lr_generator"] = lr
        for k in range(self.cfg.train.fake_steps_per_gen):
            stats.update(self.fake_step(reuse=k == 0))
        self.step += 1
        return stats

    # ------------------------------------------------------------------ state

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {}
        tensors.update(pack_module("generator", self.acc.unwrap_model(self.generator)))
        tensors.update(pack_module("fake_score", self.acc.unwrap_model(self.fake)))
        if self.head is not None:
            tensors.update(pack_module("head", self.acc.unwrap_model(self.head)))
        if self.ema is not None:
            tensors.update(pack_module("ema", self.ema))
        layouts = {}
        for name, opt in (("opt_generator", self.opt_g), ("opt_fake", self.opt_f)):
            t, layout = pack_optimizer(name, opt.optimizer if hasattr(opt, "optimizer") else opt)
            tensors.update(t)
            layouts[name] = layout
        tensors.update(rng_tensors("rng", {"train": self.rng}))
        meta = {
            "step": self.step,
            "config": config_mod.to_dict(self.cfg),
            "optimizers": layouts,
            "counters": {"nonfinite_total": self.nonfinite_total, "overflow_total": self.overflow_total},
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "format": "onestep-checkpoint-1",
        }
        return tensors, meta

    def save_checkpoint(self) -> Path | None:
        """Atomic checkpoint of the whole state (main process writes; all ranks hold the same)."""
        path = checkpoint_path(self.run_dir, self.step)
        tensors, meta = self.state_tensors()
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise OnestepError(f"refusing to checkpoint non-finite weights ({bad[0]}) at step {self.step}")
        if self.acc.is_main_process:
            atomic_save(tensors, path, {k: json.dumps(v) for k, v in meta.items()})
            prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        tensors, raw = load_safetensors(path)
        meta = {k: json.loads(v) for k, v in raw.items()}
        self._check_resumable(meta.get("config", {}), path)
        unpack_module("generator", tensors, self.acc.unwrap_model(self.generator))
        unpack_module("fake_score", tensors, self.acc.unwrap_model(self.fake))
        if self.head is not None:
            unpack_module("head", tensors, self.acc.unwrap_model(self.head))
        if self.ema is not None:
            unpack_module("ema", tensors, self.ema)
        for name, opt in (("opt_generator", self.opt_g), ("opt_fake", self.opt_f)):
            target = opt.optimizer if hasattr(opt, "optimizer") else opt
            unpack_optimizer(name, tensors, meta["optimizers"][name], target)
        restore_rng("rng", tensors, {"train": self.rng})
        if meta.get("scaler") and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self.nonfinite_total = meta["counters"]["nonfinite_total"]
        self.overflow_total = meta["counters"]["overflow_total"]

    def _check_resumable(self, saved: dict, path: Path) -> None:
        now = config_mod.to_dict(self.cfg)
        try:  # keys added to the schema after the checkpoint was written take their defaults
            saved = config_mod.to_dict(config_mod.from_dict(saved))
        except OnestepError:
            pass
        diffs = [k for k in _flat_diff(saved, now) if k not in RESUMABLE_CHANGES]
        if diffs:
            raise OnestepError(
                f"cannot resume from {path}: the config differs in {', '.join(diffs[:5])}; "
                f"use the run's own config.yaml or a new --output directory"
            )

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: Path | None = None) -> dict:
        """Train to ``train.steps`` (resuming from ``resume`` if given); returns the last stats."""
        tr = self.cfg.train
        if resume is not None:
            self.load_checkpoint(resume)
        if self.acc.is_main_process:
            atomic_write_text(config_mod.dump_yaml(self.cfg), self.run_dir / "config.yaml")
            spec = json.dumps(network_spec(self.teacher.network), indent=1)
            atomic_write_text(spec, self.run_dir / NETWORK_FILE)
            _truncate_stats(self.run_dir / "stats.jsonl", self.step)
        bar = tqdm(
            total=tr.steps, initial=self.step, desc=f"distill {self.spec.name}",
            disable=not (tr.progress and self.acc.is_main_process), dynamic_ncols=True,
        )
        window: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        stats: dict = {}
        while self.step < tr.steps:
            stats = self.iteration()
            for k, v in stats.items():
                window.setdefault(k, []).append(v)
            bar.update(1)
            if self.step % tr.log_every == 0 or self.step == tr.steps:
                elapsed = time.perf_counter() - t0
                row = {"step": self.step, **{k: sum(v) / len(v) for k, v in window.items()}}
                row.update(
                    nonfinite_skipped=self.nonfinite_total,
                    fp16_overflows=self.overflow_total,
                    sec_per_iter=elapsed / max(1, len(window.get("loss_g", [1]))),
                )
                if self.acc.is_main_process:
                    with open(self.run_dir / "stats.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                bar.set_postfix(loss_g=f"{row['loss_g']:.4g}", loss_f=f"{row['loss_f']:.4g}")
                window, t0 = {}, time.perf_counter()
            if self.step % tr.checkpoint_every == 0 or self.step == tr.steps:
                self.save_checkpoint()
        bar.close()
        if self._fingerprint(self.teacher) != self.teacher_fingerprint:
            raise RuntimeError("teacher parameters changed during training")  # an invariant, not user error
        return stats


def cat_cond(a, b):
    """Two batches' conditioning stacked along the batch: labels (B,), embeddings (B, L, D), tuples of them, or None."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot mix conditional and unconditional batches")
    if torch.is_tensor(a):
        return torch.cat([a, b])
    return type(a)(torch.cat([x, y]) if torch.is_tensor(x) else x for x, y in zip(a, b))


def _flat_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        full = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _flat_diff(va, vb, full + ".")
        elif va != vb:
            out.append(full)
    return out


def _truncate_stats(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in rows if json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(rows):
        atomic_write_text("".join(ln + "\n" for ln in kept), path)
