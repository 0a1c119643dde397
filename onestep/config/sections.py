"""The sections of a distillation config: each key with its type, domain and meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..core.schedule import ScheduleConfig
from ..core.schema import key
from ..errors import OnestepError
from ..nets.lora import LoraSettings
from .objective import ObjectiveConfig, SigmaSampler


@dataclass
class TeacherConfig:
    """Which frozen model is distilled."""

    kind: Literal["gmm", "diffusers"] = key("gmm", "gmm (analytic Gaussian mixture) or diffusers (a pipeline)")
    means: list[list[float]] | None = key(None, "gmm: one mean per component (all of one length)", nonempty=True)
    stds: list[float] | None = key(None, "gmm: isotropic std per component", gt=0)
    weights: list[float] | None = key(None, "gmm: mixture weight per component", gt=0)
    path: str | None = key(None, "diffusers: pipeline directory (relative: to the config file) or hub id",
                              nonempty=True)
    subfolder: str | None = key(None, "diffusers: subfolder of the denoiser (default unet)", nonempty=True)
    dtype: Literal["float32", "bfloat16", "float16"] = key("float32", "weight dtype of the frozen teacher")
    prompts: str | None = key(None, "text-to-image: prompts file, one per line", nonempty=True)
    guidance_scale: float = key(1.0, "text-to-image: the teacher's classifier-free guidance (Flux-dev: the value "
                                     "of its guidance input, given to teacher and generator alike)", ge=0)
    resolution: int | None = key(None, "image side in pixels for a network without a fixed size (Flux; null: 1024)",
                                 ge=16)
    trust_remote_code: bool = key(False, "diffusers: run Python code the pipeline directory ships (only if you "
                                         "trust its author; otherwise only diffusers/transformers classes load)")


@dataclass
class NetworkConfig:
    """The MLP denoiser fitted to an analytic teacher (copied into generator and fake score)."""

    hidden: int = key(256, "hidden width", ge=1)
    depth: int = key(3, "layers", ge=1)
    sigma_data: float | None = key(None, "EDM sigma_data (null: the mixture's per-coordinate std)", gt=0)
    fit_steps: int = key(3000, "Adam steps fitting the exact denoiser", ge=1)
    fit_batch: int = key(512, "batch of the fit", ge=1)
    fit_lr: float = key(1e-3, "learning rate of the fit", gt=0)


@dataclass
class LoraConfig:
    """A LoRA adapter on the teacher's frozen network instead of a full trainable copy (Hu et al.
    2021, arXiv 2106.09685; needs peft: ``pip install 'onestep[lora]'``)."""

    rank: int | None = key(None, "adapter rank (null: no adapter; the network is a full trainable copy)", ge=1)
    alpha: float | None = key(None, "the update is scaled by alpha / rank (null: alpha = rank)", gt=0)
    target_modules: list[str] | None = key(
        None, "module names adapted (null: the network family's defaults, docs/lora.md)", nonempty=True)

    def check(self, prefix: str) -> None:
        if self.rank is None and (self.alpha is not None or self.target_modules is not None):
            raise OnestepError(f"config key '{prefix}.rank': set it to use {prefix}.alpha / {prefix}.target_modules "
                               f"(e.g. {prefix}.rank: 16)")

    def settings(self) -> LoraSettings | None:
        """The adapter's settings, or None for full fine-tuning."""
        if self.rank is None:
            return None
        targets = tuple(self.target_modules) if self.target_modules is not None else None
        return LoraSettings(self.rank, self.alpha if self.alpha is not None else float(self.rank), targets)


@dataclass
class GeneratorConfig:
    sigma_init: float = key(2.5, "the generator's noise level (2.5: SiD/Uni-Instruct; DMD2: the last timestep)",
                            gt=0)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class FakeScoreConfig:
    """The fake score: a full trainable copy of the teacher's network, or a LoRA adapter on it."""

    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class GanConfig:
    """The generator's adversarial term on the discriminator's logits (non-saturating)."""

    weight: float | None = key(
        None, "weight of the GAN term in the generator loss (0: off; null: the objective's recipe, else 0)", ge=0)
    sigma: Literal["objective", "discriminator"] | None = key(
        None, "where it reads the discriminator: at the objective's x_t, divided by the objective's per-sample "
              "normaliser like its loss (SiDA), or at fresh noise of the discriminator's sigmas (DMD2) "
              "(null: the objective's recipe, else discriminator)")


@dataclass
class DiscriminatorConfig:
    """The discriminator: the density ratio of f-distill / Uni-Instruct and the GAN term's logits.
    Built when the objective needs the ratio, the GAN term is on, or ``monitor`` asks for it. Null
    keys take the objective's recipe (``onestep objectives``), else the defaults in parentheses."""

    features: Literal["teacher", "fake_score"] | None = key(
        None, "features of the frozen teacher or of the trainable fake score's encoder (null: recipe, else fake_score)")
    taps: Literal["mid", "encoder"] | None = key(
        None, "which features: the bottleneck, or one map per resolution plus the bottleneck (null: recipe, else encoder)")
    head: Literal["conv", "mean"] | None = key(
        None, "conv heads (DMD2, FastGen) or the features' channel mean per location (SiDA) (null: recipe, else conv)")
    hidden: int = key(64, "width of the conv heads", ge=1)
    sigma_sampler: SigmaSampler | None = key(
        None, "noise levels of its loss (null: recipe, else lognormal)")
    sigma_range: list[float] | None = key(None, "range of that sampler (as objective.sigma_range)", length=2, ge=0)
    weighting: Literal["none", "edm"] | None = key(
        None, "per-sample weight of its loss: 1, or EDM's lambda(sigma) (SiDA) (null: recipe, else none)")
    noise: Literal["shared", "independent"] | None = key(
        None, "real and fake samples at the same sigma and noise (SiDA) or independent ones (DMD2) "
              "(null: recipe, else shared)")
    loss_weight: float | None = key(
        None, "weight of its loss next to the fake-score loss (one optimizer step) (null: recipe, else 1)", ge=0)
    r1_weight: float = key(0.0, "R1 penalty on real samples", ge=0)
    lr: float | None = key(None, "learning rate of its heads (null: train.lr_fake)", gt=0)
    monitor: bool = key(False, "train it (and log its held-out accuracy and log-ratio spread) even when "
                               "neither the objective nor the GAN term reads it")

    def check(self, prefix: str) -> None:
        if self.head == "mean" and self.features == "teacher":
            raise OnestepError(f"config keys '{prefix}.head' and '{prefix}.features': the parameter-free mean head "
                               f"cannot learn on the frozen teacher's features; use head: conv or features: fake_score")


# What a null discriminator / gan key means when the objective's recipe says nothing.
RECIPE_DEFAULTS = {
    "gan.weight": 0.0, "gan.sigma": "discriminator",
    "discriminator.features": "fake_score", "discriminator.taps": "encoder", "discriminator.head": "conv",
    "discriminator.sigma_sampler": "lognormal", "discriminator.weighting": "none",
    "discriminator.noise": "shared", "discriminator.loss_weight": 1.0,
}


@dataclass
class RegressionConfig:
    """DMD's regression term (Yin et al. 2023, arXiv 2311.18828, Eq. 7) for any objective:
    ``weight * 0.5 |G(z) - y(z)|^2`` per pair, where ``y(z)`` is the teacher's multi-step ODE
    sample from ``sigma_max z`` (pairs: the teacher-sample cache, ``data.cache_size`` of them
    with ``data.cache_steps`` Heun steps, made once per run, or the file ``data.pairs``)."""

    weight: float = key(0.0, "weight of the regression term (0: off)", ge=0)
    batch_size: int = key(16, "pairs per generator step (global)", ge=1)


@dataclass
class DataConfig:
    """Where the discriminator's "real" samples come from, and the data-free teacher-sample cache
    (also the regression term's pairs), made in the run or read from a ``pairs`` file."""

    dataset: str | None = key(None, "real samples: digits | digits16 | fashion-mnist | an image folder | an .npz "
                                    "(null: teacher samples, data-free)", nonempty=True)
    root: str | None = key(None, "fashion-mnist: where its files are (else $ONESTEP_DATA, the user cache, "
                                 "/usr/share/datasets/fashion-mnist)", nonempty=True)
    cache_size: int = key(256, "teacher ODE samples cached in the run (data-free real side, regression pairs)",
                          ge=1)
    cache_steps: int = key(18, "Heun steps of the cache's teacher sampler (NFE = 2 n - 1)", ge=1)
    cache_batch: int = key(64, "batch of the cache's sampler", ge=1)
    pairs: str | None = key(None, "a teacher pairs file made once by `onestep pairs` (relative: to the config "
                                  "file), read instead of making the cache in the run (cache_size and "
                                  "cache_steps then unused)", nonempty=True)


@dataclass
class TrainConfig:
    steps: int = key(1000, "generator steps", ge=1)
    batch_size: int = key(64, "global batch", ge=1)
    fake_steps_per_gen: int = key(1, "fake-score (+ discriminator) steps per generator step", ge=1)
    grad_accum: int = key(1, "micro-batches per optimizer step", ge=1)
    lr_generator: float = key(1e-4, "generator learning rate", gt=0)
    lr_fake: float = key(1e-4, "fake-score learning rate", gt=0)
    lr_decay: Literal["none", "cosine"] = key("none", "generator schedule: constant, or cosine to 10% over steps")
    optimizer: Literal["adam", "adamw"] = key("adam", "optimizer of every trained network")
    betas: list[float] = key(default_factory=lambda: [0.0, 0.999], doc="Adam betas", length=2, ge=0, lt=1)
    weight_decay: float = key(0.0, "weight decay", ge=0)
    grad_clip: float = key(10.0, "max global gradient norm per network (0: off)", ge=0)
    ema_halflife_kimg: float = key(0.0, "EMA half-life in thousands of samples (0: no EMA)", ge=0)
    seed: int = key(0, "seed of every random draw", ge=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = key("no", "autocast dtype of the networks")
    gradient_checkpointing: bool = key(False, "recompute UNet activations in backward (saves memory)")
    sharding: Literal["none", "fsdp"] = key(
        "none", "fsdp: shard generator, fake score and EMA across processes (FSDP2, one unit per block)")
    shard_teacher: bool = key(False, "with sharding: fsdp, shard the frozen teacher too")
    retain_freed_memory: bool = key(True, "CPU: keep freed memory in the process (glibc mallopt)")
    checkpoint_every: int = key(500, "steps between checkpoints", ge=1)
    keep_checkpoints: int = key(2, "checkpoints kept (older ones are deleted)", ge=1)
    log_every: int = key(50, "steps between rows of stats.jsonl (and of the tracker)", ge=1)
    report_to: Literal["none", "tensorboard", "wandb"] = key(
        "none", "experiment tracker (through accelerate; pip install 'onestep[tensorboard]' or '[wandb]')")
    sample_every: int = key(500, "steps between validation sample grids from fixed noise (<run>/samples/, the "
                                 "tracker); 0: none; image teachers only", ge=0)
    max_nonfinite: int = key(10, "abort after this many non-finite steps in a row", ge=1)
    progress: bool = key(True, "progress bar")


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    fake_score: FakeScoreConfig = field(default_factory=FakeScoreConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attention: Literal["auto", "xformers", "flash", "efficient", "math"] = key(
        "auto", "attention kernels of every network")


