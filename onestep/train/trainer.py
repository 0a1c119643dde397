"""The distillation loop: the one place with accelerate, optimizers, the non-finite policy, EMA,
checkpoints and logs. What one iteration computes is ``distill.Distillation``'s.

An iteration is one generator update, then ``train.fake_steps_per_gen`` fake-score (+
discriminator) updates, each accumulated over ``train.grad_accum`` micro-batches; the first
fake-score step reuses the generator step's samples. A non-finite loss or gradient skips the
step (counted); ``train.max_nonfinite`` in a row abort with the last good checkpoint named.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from .. import config as config_mod
from ..core.ema import EMA, ema_beta
from ..core.io import atomic_save, atomic_write_text
from ..core.modules import fingerprint
from ..core.rundir import (
    CONFIG_FILE,
    NETWORK_FILE,
    STATS_FILE,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
)
from ..core.schedule import ScheduleConfig
from ..distill.draws import GlobalDraws
from ..distill.method import Distillation, Networks
from ..distill.plan import Plan
from ..errors import OnestepError, OnestepWarning
from ..nets.lora import is_adapter_parameter
from . import sharding, state, tracking
from .allocator import retain_freed_memory


def start_accelerator(train: config_mod.TrainConfig, run_dir=None) -> Accelerator:
    """The run's Accelerator (with its experiment tracker), every global RNG seeded by ``train.seed``."""
    tracking.check_tracker(train.report_to)
    tracker = {} if train.report_to == "none" else {"log_with": train.report_to, "project_dir": str(run_dir)}
    acc = Accelerator(mixed_precision=train.mixed_precision, gradient_accumulation_steps=train.grad_accum,
                      cpu=not torch.cuda.is_available(), **tracker)
    if acc.device.type == "cpu" and train.retain_freed_memory:
        retain_freed_memory()
    set_seed(train.seed)
    return acc


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


class Trainer:
    """The state of one distillation run and its loop.

    ``Trainer(plan, train, schedule, record, run_dir, acc, teacher, generator, fake_score,
    discriminator, real, pairs, holdout)`` reads its own section (``train``) and the run's
    ``Plan``; ``record`` is the whole config, only written (config.yaml, checkpoints, tracker) and
    compared on resume. It takes the networks unwrapped (``build.build_trainer`` makes them),
    prepares them with accelerate, and builds the run's ``Distillation`` on the prepared modules.
    """

    def __init__(self, plan: Plan, train: config_mod.TrainConfig, schedule: ScheduleConfig, record,
                 run_dir: str | Path, acc: Accelerator, teacher, generator: nn.Module, fake_score: nn.Module,
                 discriminator: nn.Module | None = None, real=None, pairs=None, holdout=None):
        self.plan, self.train, self.record = plan, train, record
        self.run_dir, self.acc, self.teacher = Path(run_dir), acc, teacher
        tr = train
        self.device, rank, world = acc.device, acc.process_index, acc.num_processes
        for name, n in (("train.batch_size", tr.batch_size), ("regression.batch_size", plan.regression_batch)):
            if n % world:
                raise OnestepError(f"config key '{name}': {n} is not divisible by {world} processes")
        opt_cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
        self.ema = EMA(generator, ema_beta(tr.batch_size, tr.ema_halflife_kimg * 1000.0)) \
            if tr.ema_halflife_kimg > 0 else None
        # FSDP2 shards in place (no wrapper): the sharded modules are their own "plain" modules
        self.sharded = tr.sharding == "fsdp" and world > 1
        if tr.sharding == "fsdp" and world == 1:
            warnings.warn("train.sharding: fsdp with one process shards nothing; launch several with torchrun "
                          "--nproc_per_node N", OnestepWarning, stacklevel=2)
        if self.sharded:
            for module in (generator, fake_score, self.ema.module if self.ema is not None else None):
                if module is not None:
                    sharding.shard(module.to(self.device))
            if tr.shard_teacher:
                sharding.shard(teacher.network)
            units = len(generator.network.shard_units()) + 1
            acc.print(f"sharding: generator, fake score{', EMA' if self.ema is not None else ''}"
                      f"{', teacher' if tr.shard_teacher else ''} in {units} FSDP units each over {world} processes")
        self.teacher_fingerprint = fingerprint(teacher, skip=is_adapter_parameter)  # base weights only
        # the denoiser's alone: a LoRA run's sample/export rebuild it from the teacher and compare
        self.network_fingerprint = fingerprint(teacher.network, skip=is_adapter_parameter)
        # the fused Adam kernel (CPU and CUDA) instead of torch's default per-tensor loop on CPU:
        # 3 ms against 27 ms per step for the digits UNet's 0.7M parameters (eval/bench_step.py);
        # sharded (DTensor) parameters take the multi-tensor kernel
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") and not self.sharded else {"foreach": True}
        opt_kw = {"betas": tuple(float(b) for b in tr.betas), "weight_decay": tr.weight_decay, **fused}
        opt_g = opt_cls(generator.parameters(), lr=tr.lr_generator, **opt_kw)
        groups = [{"params": list(fake_score.parameters()), "lr": tr.lr_fake}]
        heads = list(discriminator.parameters()) if discriminator is not None else []
        if heads:  # a parameter-free head (SiDA's channel mean) trains through the fake score alone
            groups.append({"params": heads, "lr": plan.critic.lr or tr.lr_fake})
        opt_f = opt_cls(groups, lr=tr.lr_fake, **opt_kw)
        trained = [m for m in (generator, fake_score, discriminator if heads else None) if m is not None]
        if self.sharded:  # accelerate places and wraps only what is not sharded (the discriminator: DDP)
            *wrapped, self.opt_generator, self.opt_fake = acc.prepare(*trained[2:], opt_g, opt_f)
            prepared = [generator, fake_score, *wrapped]
        else:
            *prepared, self.opt_generator, self.opt_fake = acc.prepare(*trained, opt_g, opt_f)
        self.generator, self.fake_score = prepared[0], prepared[1]
        self.discriminator = prepared[2] if heads else discriminator
        nets = Networks(self.generator, self.fake_score, self.discriminator, generator, fake_score, discriminator)
        # the modules owning each optimizer's parameters (sharded optimizer states are keyed by them)
        self._owners = {"opt_generator": generator,
                        "opt_fake": nn.ModuleDict({"fake_score": fake_score, **({"discriminator": discriminator}
                                                                                if heads else {})})}
        self.holdout = holdout
        self.method = Distillation(plan, schedule, teacher, nets, real, pairs, reduce_sum=self._all_reduce_sum)
        self.rng = torch.Generator().manual_seed(tr.seed)
        self.rng_state = state.GeneratorState({"train": self.rng})
        self.draws = GlobalDraws(self.rng, tr.batch_size, rank, world, self.device, schedule, plan.stratified_sigma)
        self._params = {name: [p for m in mods for p in m.parameters()] for name, mods in
                        (("generator", trained[:1]), ("fake", trained[1:]))}
        self.counters = state.Counters()  # step, non-finite steps skipped, fp16 overflows
        self.nonfinite_streak = {"generator": 0, "fake": 0}  # consecutive skipped steps per network
        self.lock = None  # the run directory's lock (core.rundir.RunLock), released when fit() ends

    # ------------------------------------------------------------------ one iteration

    def generator_step(self) -> dict:
        """One generator update (accumulated over ``grad_accum`` micro-batches)."""
        stats: dict[str, float] = {}
        for _ in range(self.train.grad_accum):
            with self.acc.accumulate(self.generator, self.fake_score), self.method.critics_frozen():
                out = self.method.generator_loss(self.draws, self.step, self.acc.autocast)
                ok = self._backward_and_step(out.loss, self.opt_generator, "generator", stats)
                if ok and self.acc.sync_gradients and self.ema is not None:
                    self.ema.update(self.method.ema_source)
            stats.update(out.stats)
        return stats

    def fake_step(self, reuse: bool) -> dict:
        """One fake-score (+ discriminator) update on generator samples (``reuse``: the last x_g)."""
        stats: dict[str, float] = {}
        accum = self.train.grad_accum
        for micro in range(accum):
            with self.acc.accumulate(self.generator, self.fake_score):
                loss, step_stats = self.method.fake_score_loss(self.draws, self.acc.autocast,
                                                               reuse=reuse and micro == accum - 1)
                self._backward_and_step(loss, self.opt_fake, "fake", stats)
            stats.update(step_stats)
        return stats

    def iteration(self) -> dict:
        lr = self._set_generator_lr()
        stats = self.generator_step()
        stats["lr_generator"] = lr
        for k in range(self.train.fake_steps_per_gen):
            stats.update(self.fake_step(reuse=k == 0))
        self.counters.step += 1
        return stats

    def _backward_and_step(self, loss, optimizer, name: str, stats: dict) -> bool:
        """Backward, clip, step; a non-finite loss or gradient skips the step (counted)."""
        tr = self.train
        if not sharding.true_everywhere(self.acc, _finite(loss)):  # every process skips together
            optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(name, "loss")
            return False
        self.acc.backward(loss)
        if not self.acc.sync_gradients:
            return True
        max_norm = tr.grad_clip if tr.grad_clip > 0 else math.inf
        if self.sharded:
            norm = sharding.clip_grad_norm_(self._params[name], max_norm)
        else:
            norm = float(self.acc.clip_grad_norm_(self._params[name], max_norm))
        stats[f"grad_norm_{name}"] = norm
        if not math.isfinite(norm):
            if tr.mixed_precision == "fp16":  # the loss scaler skips this step and lowers its scale
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.counters.overflow_total += 1
                return False
            optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(name, "gradient")
            return False
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak[name] = 0
        return True

    def _count_nonfinite(self, name: str, what: str) -> None:
        self.counters.nonfinite_total += 1
        self.nonfinite_streak[name] += 1
        if self.nonfinite_streak[name] >= self.train.max_nonfinite:
            last = latest_checkpoint(self.run_dir)
            raise OnestepError(
                f"{self.nonfinite_streak[name]} non-finite steps in a row (last: {name} {what} at step "
                f"{self.step}); aborted. Last good checkpoint: {last or 'none'}. Continue it with lower learning "
                f"rates: add --resume latest --set train.lr_generator=... --set train.lr_fake=... (or use "
                f"train.mixed_precision=no in a new run)"
            )

    def _set_generator_lr(self) -> float:
        """Generator learning rate at ``self.step`` (a function of the step: resumes exactly)."""
        tr = self.train
        lr = tr.lr_generator
        if tr.lr_decay == "cosine":
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(self.step / tr.steps, 1.0)))
        for group in self.opt_generator.param_groups:
            group["lr"] = lr
        return lr

    def evaluate_discriminator(self, n: int = 256) -> dict:
        """Held-out accuracy and log-ratio spread ({} without a discriminator); its own RNG, a
        function of (seed, step), so logging never changes the training draws."""
        if self.method.critic is None or self.holdout is None:
            return {}
        rng = torch.Generator().manual_seed(self.train.seed * 1_000_003 + self.step)
        return self.method.evaluate_discriminator(self.holdout, rng, n, self.device)

    def _all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.acc.num_processes == 1 else self.acc.reduce(t.clone(), reduction="sum")

    # ------------------------------------------------------------------ state

    @property
    def step(self) -> int:
        return self.counters.step

    @property
    def nonfinite_total(self) -> int:
        return self.counters.nonfinite_total

    def checkpoint_state(self) -> state.CheckpointState:
        """The run's checkpointed objects by name (``train.state``)."""
        nets = self.method.nets
        modules = {"generator": nets.plain_generator, "fake_score": nets.plain_fake_score}
        if nets.plain_discriminator is not None:
            modules["discriminator"] = nets.plain_discriminator
        if self.ema is not None:
            modules["ema"] = self.ema.module
        owners = self._owners if self.sharded else {}  # sharded optimizer states are keyed by their modules
        optimizers = {name: (opt, owners.get(name)) for name, opt in
                      (("opt_generator", self.opt_generator), ("opt_fake", self.opt_fake))}
        return state.CheckpointState(modules, optimizers, self.counters, self.rng_state, self.acc.scaler,
                                     self.network_fingerprint)

    def save_checkpoint(self) -> Path:
        """Atomic checkpoint of the whole state (the main process writes; sharded states are gathered to it)."""
        path = checkpoint_path(self.run_dir, self.step)
        tensors, meta = state.pack(self.checkpoint_state(), self.record)
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if not sharding.true_everywhere(self.acc, not bad):  # (sharded: only the main process holds them)
            raise OnestepError(f"refusing to checkpoint non-finite weights ({bad[0] if bad else 'on the main process'}) "
                               f"at step {self.step}")
        if self.acc.is_main_process:
            atomic_save(tensors, path, {k: json.dumps(v) for k, v in meta.items()})
            prune_checkpoints(self.run_dir, self.train.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: Path | None = None) -> dict:
        """Train to ``train.steps`` (resuming from ``resume`` if given); returns the last stats."""
        try:
            stats = self._fit(resume)
            # every rank here before any destroys the group: no collective still in flight on gloo's
            # worker threads when the group goes (one that is can abort a rank at exit, "terminate
            # called without an active exception", and the launcher then kills the others mid-write)
            self.acc.wait_for_everyone()
            return stats
        finally:
            self.close()

    def close(self) -> None:
        """Finish the trackers, destroy the process group and release the run directory's lock
        (also after a run that raised: a gloo group left to interpreter exit can abort a process,
        "terminate called without an active exception")."""
        self.acc.end_training()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def restore(self, path: Path) -> None:
        """Networks, optimisers, EMA, counters and random streams from the checkpoint at ``path``
        (refused where the run's config differs from the one it was written with)."""
        state.restore(self.checkpoint_state(), self.record, self.acc, path)

    def _fit(self, resume: Path | None) -> dict:
        tr = self.train
        if resume is not None:
            self.restore(resume)
        main = self.acc.is_main_process
        if main:
            atomic_write_text(config_mod.dump_yaml(self.record), self.run_dir / CONFIG_FILE)
            atomic_write_text(json.dumps(self.teacher.network.spec(), indent=1), self.run_dir / NETWORK_FILE)
            state.truncate_stats(self.run_dir, self.step)
            tracking.start(self.acc, tr.report_to, config_mod.to_dict(self.record))
        grid = tracking.SampleGrid(self.teacher) if tr.sample_every and len(self.teacher.sample_shape) == 3 else None
        bar = tqdm(total=tr.steps, initial=self.step, desc=f"distill {self.plan.name}",
                   disable=not (tr.progress and main), dynamic_ncols=True)
        window: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        stats: dict = {}
        while self.step < tr.steps:
            stats = self.iteration()
            for k, v in stats.items():
                window.setdefault(k, []).append(v)
            bar.update(1)
            if self.step % tr.log_every == 0 or self.step == tr.steps:
                row = {"step": self.step, **{k: sum(v) / len(v) for k, v in window.items()},
                       "nonfinite_skipped": self.counters.nonfinite_total,
                       "fp16_overflows": self.counters.overflow_total,
                       "sec_per_iter": (time.perf_counter() - t0) / max(1, len(window.get("loss_g", [1])))}
                row.update(self.evaluate_discriminator())
                if main:
                    with open(self.run_dir / STATS_FILE, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    tracking.log_row(self.acc, tr.report_to, row, self.step)
                bar.set_postfix(loss_g=f"{row['loss_g']:.4g}", loss_f=f"{row['loss_f']:.4g}")
                window, t0 = {}, time.perf_counter()
            # a sharded generator's forward is a collective: every rank renders, the main one saves
            if grid is not None and (main or self.sharded) and (self.step % tr.sample_every == 0
                                                                 or self.step == tr.steps):
                generator = self.ema.module if self.ema is not None else self.method.ema_source
                images = grid.render(generator, self.device)
                if main:
                    picture = grid.save(images, self.run_dir, self.step)
                    tracking.log_image(self.acc, tr.report_to, "samples", picture, self.step)
            if self.step % tr.checkpoint_every == 0 or self.step == tr.steps:
                self.save_checkpoint()
        bar.close()
        # (a sum in float64: equal up to summation order, which sharding may change)
        if not math.isclose(fingerprint(self.teacher, skip=is_adapter_parameter), self.teacher_fingerprint, rel_tol=1e-12):
            raise RuntimeError("teacher parameters changed during training")  # an invariant, not user error
        return stats
