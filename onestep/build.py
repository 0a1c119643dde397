"""The composition root: the one place that maps a config to objects.

``build_teacher`` dispatches on ``teacher.kind`` (nowhere else does); ``build_trainer``
assembles the teacher, the generator and fake score copied from its network, the
discriminator when the objective or the GAN term needs one, the real-sample source and the
regression pairs, and hands them to ``train.Trainer``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from .config import Config
from .core.io import atomic_save, load_safetensors
from .core.rundir import CACHE_FILE, TEACHER_NETWORK_FILE, RunLock
from .data.datasets import dataset_source
from .data.sources import ExactSamples, TeacherSampleCache, split_holdout
from .distill.method import Distillation
from .nets.discriminator import Discriminator
from .nets.fake_score import FakeScore
from .nets.generator import OneStepGenerator
from .nets.mlp import MLPDenoiser
from .teachers.diffusers import load_diffusers_teacher
from .teachers.gmm import AnalyticTeacher, GaussianMixture
from .train.denoiser_fit import train_denoiser
from .train.trainer import Trainer, start_accelerator

CACHE_SEED_OFFSET = 7919  # the teacher-sample cache's seed: train.seed + this
HOLDOUT_FRACTION = 0.1  # of the real samples, never shown to the discriminator (its held-out accuracy)


def gmm_of(config: Config) -> GaussianMixture:
    t = config.teacher
    return GaussianMixture(t.means, t.stds, t.weights)


def gmm_network(config: Config) -> MLPDenoiser:
    """The (untrained) MLP an analytic teacher's fit uses."""
    n = config.network
    gmm = gmm_of(config)
    sigma_data = n.sigma_data if n.sigma_data is not None else gmm.data_std()
    return MLPDenoiser(gmm.dim, hidden=n.hidden, depth=n.depth, sigma_data=sigma_data)


def fit_gmm_network(config: Config, progress: bool = True) -> MLPDenoiser:
    """Fit the MLP denoiser to the mixture's exact denoiser over all sigmas (deterministic)."""
    n, gmm = config.network, gmm_of(config)
    with torch.random.fork_rng():  # initialisation independent of the global RNG history
        torch.manual_seed(config.train.seed)
        network = gmm_network(config)
    network, _ = train_denoiser(
        network, lambda k, rng: (gmm.sample(k, generator=rng)[0], None), steps=n.fit_steps,
        batch_size=n.fit_batch, lr=n.fit_lr, schedule=config.schedule, seed=config.train.seed,
        target=lambda x, s, c: gmm.denoise(x, s), wide_sigma=True, progress=progress, desc="fit teacher MLP",
    )
    return network


def fingerprint(*parts) -> str:
    """A short hash of JSON-able settings: what a cached artefact was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_teacher(config: Config, run_dir=None, device="cpu", progress: bool = True):
    """The teacher a config names. An analytic teacher's fitted network is cached in ``run_dir``
    (a resumed run does not refit), tagged with what it was fitted to: a cache made for another
    mixture, network, schedule or seed is refitted, never reused."""
    t = config.teacher
    if t.kind == "gmm":
        cache = Path(run_dir) / TEACHER_NETWORK_FILE if run_dir is not None else None
        tag = fingerprint(asdict(t), asdict(config.network), asdict(config.schedule), config.train.seed)
        network = None
        if cache is not None and cache.is_file():
            tensors, meta = load_safetensors(cache)
            if meta.get("fingerprint") == tag:
                network = gmm_network(config)
                network.load_state_dict(tensors)
        if network is None:
            network = fit_gmm_network(config, progress=progress)
            if cache is not None:
                atomic_save(network.state_dict(), cache, {"fingerprint": tag})
        return AnalyticTeacher(gmm_of(config), network.to(device)).to(device)
    return load_diffusers_teacher(t.path, t.subfolder, t.dtype, t.prompts, t.guidance_scale, config.attention, device,
                                  trust_remote_code=t.trust_remote_code)


def teacher_cache(teacher, config: Config, run_dir=None, device="cpu", progress: bool = True) -> TeacherSampleCache:
    d = config.data
    path = Path(run_dir) / CACHE_FILE if run_dir is not None else None
    seed = config.train.seed + CACHE_SEED_OFFSET
    tag = fingerprint(asdict(config.teacher), d.cache_size, d.cache_steps, seed, asdict(config.schedule))
    return TeacherSampleCache(teacher, d.cache_size, d.cache_steps, d.cache_batch, seed, config.schedule, path, device,
                              progress, tag)


def real_source(teacher, config: Config, cache: TeacherSampleCache | None, **cache_args):
    """The discriminator's real samples: the data set, else exact (analytic) or cached teacher samples."""
    if config.data.dataset:
        return dataset_source(config.data.dataset, teacher)
    if config.teacher.kind == "gmm":
        return ExactSamples(teacher.gmm)
    return cache if cache is not None else teacher_cache(teacher, config, **cache_args)


def build_trainer(config: Config, run_dir, teacher=None) -> Trainer:
    """A ready Trainer for ``config`` writing to ``run_dir`` (``teacher``: reuse a loaded one).

    What can fail on the user's input (a diffusers teacher, a data set) is loaded before anything
    is written; then the run directory is created and locked for one writer until ``fit`` ends.
    """
    run_dir = Path(run_dir)
    tr = config.train
    acc = start_accelerator(tr, run_dir)
    progress = tr.progress and acc.is_main_process
    needs_run_dir = teacher is None and config.teacher.kind == "gmm"  # its fitted network is cached there
    if teacher is None and not needs_run_dir:
        teacher = build_teacher(config, None, acc.device, progress=progress)
    dataset = None
    if config.data.dataset and teacher is not None and Distillation.needs_discriminator(config):
        dataset = dataset_source(config.data.dataset, teacher)
    lock = None
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    acc.wait_for_everyone()
    if teacher is None:
        teacher = build_teacher(config, run_dir, acc.device, progress=progress)
    teacher.to(acc.device)
    cache_args = {"run_dir": run_dir, "device": acc.device, "progress": progress}
    pairs = teacher_cache(teacher, config, **cache_args) if config.regression.weight > 0 else None
    # trainable networks start from the teacher's weights (and its feature taps)
    d = config.discriminator
    teacher.network.feature_taps = d.taps
    generator = OneStepGenerator(teacher.network, config.generator.sigma_init)
    fake_score = FakeScore(teacher.network)
    discriminator, real, holdout = None, None, None
    if Distillation.needs_discriminator(config):
        discriminator = Discriminator(feature_shapes(teacher, acc.device), head=d.head, hidden=d.hidden)
        source = dataset or real_source(teacher, config, pairs, **cache_args)
        real, holdout = split_holdout(source, HOLDOUT_FRACTION, config.train.seed)
    if tr.gradient_checkpointing:
        for net in (generator.network, fake_score.network, teacher.network):
            net.enable_gradient_checkpointing()
    trainer = Trainer(config, run_dir, acc, teacher, generator, fake_score, discriminator, real, pairs, holdout)
    trainer.lock = lock
    return trainer


def feature_shapes(teacher, device) -> list[tuple[int, ...]]:
    """Shapes (without batch) of the teacher network's feature taps (fake-score copies share them)."""
    x = torch.zeros(1, *teacher.sample_shape, device=device)
    cond = teacher.sample_cond(1, torch.Generator().manual_seed(0))
    cond = cond.to(device) if torch.is_tensor(cond) else cond
    with torch.no_grad():
        _, feats = teacher.network(x, torch.ones(1, device=device), cond, return_features=True)
    return [tuple(f.shape[1:]) for f in feats]
