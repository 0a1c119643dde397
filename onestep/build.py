"""The composition root: the one place that maps a config to objects.

``build_teacher`` dispatches on ``teacher.kind`` (nowhere else does); ``build_trainer``
assembles the teacher, the generator and fake score copied from its network, the
discriminator when the objective or the GAN term needs one, the real-sample source and the
regression pairs, and hands them to ``train.Trainer``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import Config
from .core.io import atomic_save, load_safetensors
from .core.rundir import CACHE_FILE, TEACHER_NETWORK_FILE
from .data.datasets import dataset_source
from .data.sources import ExactSamples, TeacherSampleCache
from .distill.method import Distillation
from .nets.discriminator import DiscriminatorHead
from .nets.fake_score import FakeScore
from .nets.generator import OneStepGenerator
from .nets.mlp import MLPDenoiser
from .teachers.diffusers import load_diffusers_teacher
from .teachers.gmm import AnalyticTeacher, GaussianMixture
from .train.denoiser_fit import train_denoiser
from .train.trainer import Trainer, start_accelerator

CACHE_SEED_OFFSET = 7919  # the teacher-sample cache's seed: train.seed + this


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


def build_teacher(config: Config, run_dir=None, device="cpu", progress: bool = True):
    """The teacher a config names. An analytic teacher's fitted network is cached in ``run_dir``
    (a resumed run does not refit)."""
    t = config.teacher
    if t.kind == "gmm":
        cache = Path(run_dir) / TEACHER_NETWORK_FILE if run_dir is not None else None
        if cache is not None and cache.is_file():
            network = gmm_network(config)
            network.load_state_dict(load_safetensors(cache)[0])
        else:
            network = fit_gmm_network(config, progress=progress)
            if cache is not None:
                atomic_save(network.state_dict(), cache)
        return AnalyticTeacher(gmm_of(config), network.to(device)).to(device)
    return load_diffusers_teacher(t.path, t.subfolder, t.dtype, t.prompts, t.guidance_scale, config.attention, device)


def teacher_cache(teacher, config: Config, run_dir=None, device="cpu", progress: bool = True) -> TeacherSampleCache:
    d = config.data
    path = Path(run_dir) / CACHE_FILE if run_dir is not None else None
    return TeacherSampleCache(teacher, d.cache_size, d.cache_steps, d.cache_batch, config.train.seed + CACHE_SEED_OFFSET,
                              config.schedule, path, device, progress)


def real_source(teacher, config: Config, cache: TeacherSampleCache | None, **cache_args):
    """The discriminator's real samples: the data set, else exact (analytic) or cached teacher samples."""
    if config.data.dataset:
        return dataset_source(config.data.dataset, teacher)
    if config.teacher.kind == "gmm":
        return ExactSamples(teacher.gmm)
    return cache if cache is not None else teacher_cache(teacher, config, **cache_args)


def build_trainer(config: Config, run_dir, teacher=None) -> Trainer:
    """A ready Trainer for ``config`` writing to ``run_dir`` (``teacher``: reuse a loaded one)."""
    run_dir = Path(run_dir)
    tr = config.train
    acc = start_accelerator(tr)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    progress = tr.progress and acc.is_main_process
    if teacher is None:
        teacher = build_teacher(config, run_dir, acc.device, progress=progress)
    teacher.to(acc.device)
    cache_args = {"run_dir": run_dir, "device": acc.device, "progress": progress}
    pairs = teacher_cache(teacher, config, **cache_args) if config.regression.weight > 0 else None
    # trainable networks start from the teacher's weights
    generator = OneStepGenerator(teacher.network, config.generator.sigma_init)
    fake_score = FakeScore(teacher.network)
    discriminator, real = None, None
    if Distillation.needs_discriminator(config):
        discriminator = DiscriminatorHead(feature_shape(teacher, acc.device), hidden=config.discriminator.hidden)
        real = real_source(teacher, config, pairs, **cache_args)
    if tr.gradient_checkpointing:
        for net in (generator.network, fake_score.network, teacher.network):
            net.enable_gradient_checkpointing()
    return Trainer(config, run_dir, acc, teacher, generator, fake_score, discriminator, real, pairs)


def feature_shape(teacher, device) -> tuple[int, ...]:
    """Shape (without batch) of the teacher network's feature tap (fake-score copies share it)."""
    x = torch.zeros(1, *teacher.sample_shape, device=device)
    cond = teacher.sample_cond(1, torch.Generator().manual_seed(0))
    cond = cond.to(device) if torch.is_tensor(cond) else cond
    with torch.no_grad():
        _, feats = teacher.network(x, torch.ones(1, device=device), cond, return_features=True)
    return tuple(feats.shape[1:])
