"""The composition root: the one place that maps a config to objects.

``build_teacher`` builds the teacher through its kind's entry (``teachers.kinds``); ``build_trainer``
assembles the teacher, the generator and fake score copied from its network, the
discriminator when the objective or the GAN term needs one, the real-sample source and the
regression pairs, and hands them to ``train.Trainer``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from . import config as config_mod
from .config import Config
from .core.rundir import CACHE_FILE, RunLock
from .data.datasets import WITH_TEST_SPLIT, dataset_source
from .data.sources import TeacherSampleCache, split_holdout
from .distill.plan import Plan
from .errors import OnestepError
from .nets import lora
from .nets.discriminator import Discriminator
from .nets.fake_score import FakeScore
from .nets.generator import OneStepGenerator
from .teachers import kinds
from .train.trainer import Trainer, start_accelerator

CACHE_SEED_OFFSET = 7919  # the teacher-sample cache's seed: train.seed + this
HOLDOUT_FRACTION = 0.1  # of the real samples, never shown to the discriminator (its held-out accuracy)


def check_config(config: Config) -> Config:
    """The checks a config's sections cannot make alone: its teacher kind's check of the teacher
    section (one-line errors). Returns ``config``."""
    kind = kinds.get(config.teacher.kind)
    kind.check(config.teacher, "teacher")
    adapters = [name for name in ("generator", "fake_score") if getattr(config, name).lora.rank is not None]
    if adapters:
        if not kind.makes_images:
            raise OnestepError(f"config key '{adapters[0]}.lora': LoRA has no known target modules for the network "
                               f"MLPDenoiser of the {kind.name} teacher; drop {adapters[0]}.lora")
        lora.require_peft()
    if config.data.dataset and not kind.makes_images:
        raise OnestepError(f"config key 'data.dataset': the {kind.name} teacher makes points, not images; drop "
                           f"data.dataset (its exact samples are the discriminator's real side)")
    return config


def load_config(path, overrides: list[str] | None = None) -> Config:
    """``config.load`` (YAML, ``--set`` overrides, schema) plus ``check_config``."""
    return check_config(config_mod.load(path, overrides))


def build_context(config: Config, run_dir=None, device="cpu", progress: bool = True) -> kinds.BuildContext:
    return kinds.BuildContext(config.network, config.schedule, config.train.seed, config.attention,
                              Path(run_dir) if run_dir is not None else None, device, progress)


def build_teacher(config: Config, run_dir=None, device="cpu", progress: bool = True):
    """The teacher a config names, built by its kind (``teachers.kinds``); an analytic teacher's
    fitted network is cached in ``run_dir`` (a resumed run does not refit)."""
    check_config(config)
    return kinds.get(config.teacher.kind).build(config.teacher, build_context(config, run_dir, device, progress))


def teacher_cache(teacher, config: Config, run_dir=None, device="cpu", progress: bool = True) -> TeacherSampleCache:
    """The run's teacher (noise, sample) pairs: the file ``data.pairs`` names (made beforehand by
    ``make_pairs``, checked against the teacher), else made once in ``run_dir``."""
    d = config.data
    seed = config.train.seed + CACHE_SEED_OFFSET
    if d.pairs:
        return TeacherSampleCache(teacher, 0, 0, d.cache_batch, seed, config.schedule, Path(d.pairs), device,
                                  progress, pairs_tag(config), fixed=True)
    path = Path(run_dir) / CACHE_FILE if run_dir is not None else None
    tag = kinds.digest(asdict(config.teacher), d.cache_size, d.cache_steps, seed, asdict(config.schedule))
    return TeacherSampleCache(teacher, d.cache_size, d.cache_steps, d.cache_batch, seed, config.schedule, path, device,
                              progress, tag)


def pairs_tag(config: Config) -> str:
    """What a pairs file must have been made with besides its teacher: the noise schedule."""
    return kinds.digest("pairs", asdict(config.schedule))


def make_pairs(teacher, config: Config, path: Path, dtype: torch.dtype = torch.float32, device="cpu",
               progress: bool = True) -> int:
    """Write ``data.cache_size`` teacher pairs (``data.cache_steps`` Heun steps, seed ``train.seed +
    CACHE_SEED_OFFSET``) to the pairs file ``path``, for runs that name it in ``data.pairs``."""
    d = config.data
    cache = TeacherSampleCache(teacher, d.cache_size, d.cache_steps, d.cache_batch,
                               config.train.seed + CACHE_SEED_OFFSET, config.schedule, None, device, progress,
                               pairs_tag(config))
    return cache.save_pairs(Path(path), dtype)


def real_source(teacher, config: Config, cache: TeacherSampleCache | None, **cache_args):
    """The discriminator's real samples: the data set, else exact (analytic) or cached teacher samples."""
    if config.data.dataset:
        return dataset_source(config.data.dataset, teacher, root=config.data.root)
    exact = kinds.get(config.teacher.kind).exact_samples(teacher)
    if exact is not None:
        return exact
    return cache if cache is not None else teacher_cache(teacher, config, **cache_args)


def build_trainer(config: Config, run_dir, teacher=None) -> Trainer:
    """A ready Trainer for ``config`` writing to ``run_dir`` (``teacher``: reuse a loaded one).

    What can fail on the user's input (a diffusers teacher, a data set) is loaded before anything
    is written; then the run directory is created and locked for one writer until ``fit`` ends.
    """
    run_dir = Path(run_dir)
    tr = config.train
    plan = Plan.from_config(check_config(config))
    acc = start_accelerator(tr, run_dir)
    progress = tr.progress and acc.is_main_process
    needs_run_dir = teacher is None and kinds.get(config.teacher.kind).fits_in_run_dir  # cached there
    if teacher is None and not needs_run_dir:
        teacher = build_teacher(config, None, acc.device, progress=progress)
    dataset, dataset_test = None, None
    if config.data.dataset and teacher is not None and plan.needs_discriminator:
        dataset = dataset_source(config.data.dataset, teacher, root=config.data.root)
        if config.data.dataset in WITH_TEST_SPLIT:
            dataset_test = dataset_source(config.data.dataset, teacher, "test", config.data.root)
    # a pairs file is checked before anything is written (against its teacher where that is loaded)
    pairs_file = teacher_cache(teacher, config) if config.data.pairs else None
    if pairs_file is not None:
        pairs_file.check()
    if teacher is not None:  # LoRA targets checked before anything is written
        for name in ("generator", "fake_score"):
            settings = getattr(config, name).lora.settings()
            if settings is not None:
                lora.targets(teacher.network, settings)
    lock = None
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir).acquire()
    acc.wait_for_everyone()
    if teacher is None:
        teacher = build_teacher(config, run_dir, acc.device, progress=progress)
    teacher.to(acc.device)
    cache_args = {"run_dir": run_dir, "device": acc.device, "progress": progress}
    if pairs_file is not None and pairs_file.teacher is not teacher:  # a teacher built in the run directory
        pairs_file = teacher_cache(teacher, config)
        pairs_file.check()
    pairs = None
    if config.regression.weight > 0:
        pairs = pairs_file if pairs_file is not None else teacher_cache(teacher, config, **cache_args)
    # trainable networks start from the teacher's weights (and its feature taps)
    d = config.discriminator
    teacher.network.feature_taps = d.taps
    generator, fake_score = trained_networks(teacher.network, config)
    discriminator, real, holdout = None, None, None
    if plan.needs_discriminator:
        discriminator = Discriminator(feature_shapes(teacher, acc.device), head=d.head, hidden=d.hidden)
        source = dataset or real_source(teacher, config, pairs if pairs is not None else pairs_file, **cache_args)
        if dataset_test is not None:  # the discriminator trains on all of train, is checked on test
            real, holdout = dataset, dataset_test
        else:
            real, holdout = split_holdout(source, HOLDOUT_FRACTION, config.train.seed)
    if tr.gradient_checkpointing:
        for net in (generator.network, fake_score.network, teacher.network):
            lora.enable_checkpointing(net)
    trainer = Trainer(plan, tr, config.schedule, config, run_dir, acc, teacher, generator, fake_score, discriminator,
                      real, pairs, holdout)
    trainer.lock = lock
    return trainer


def trained_networks(network, config: Config) -> tuple[OneStepGenerator, FakeScore]:
    """The generator and the fake score made from the teacher's ``network``: each a full trainable
    copy, or an adapter on the shared ``network`` where ``generator.lora`` / ``fake_score.lora`` is
    set. Full copies are made before any adapter is injected, so that they carry none."""
    make = {"generator": lambda net: OneStepGenerator(net, config.generator.sigma_init), "fake_score": FakeScore}
    settings = {"generator": config.generator.lora.settings(), "fake_score": config.fake_score.lora.settings()}
    made = {name: make[name](network) for name, s in settings.items() if s is None}
    made.update({name: make[name](lora.add_adapter(network, name, s, config.train.seed))
                 for name, s in settings.items() if s is not None})
    return made["generator"], made["fake_score"]


def feature_shapes(teacher, device) -> list[tuple[int, ...]]:
    """Shapes (without batch) of the teacher network's feature taps (fake-score copies share them)."""
    x = torch.zeros(1, *teacher.sample_shape, device=device)
    cond = teacher.sample_cond(1, torch.Generator().manual_seed(0))
    cond = cond.to(device) if torch.is_tensor(cond) else cond
    with torch.no_grad():
        _, feats = teacher.network(x, torch.ones(1, device=device), cond, return_features="only")
    return [tuple(f.shape[1:]) for f in feats]
