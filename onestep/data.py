"""Sources of "real" samples for the discriminator head, teacher pairs, and the bundled data sets.

With ``data.dataset`` set, real samples are data set images (with their labels); otherwise
(data-free mode) they are a cache of teacher multi-step samples, made once with the EDM
Heun sampler and stored in the run directory. The cache keeps each sample's starting
noise, so it also serves the regression term's (noise, teacher output) pairs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_save, load_safetensors
from .errors import OnestepError
from .sampling import edm_sample

CACHE_FILE = "teacher_cache.safetensors"


class TensorSource:
    """Samples x (N, ...) with optional labels (N,) drawn uniformly with replacement."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None, cond_fn=None):
        self.x, self.labels, self.cond_fn = x, labels, cond_fn

    def __len__(self) -> int:
        return len(self.x)

    def draw(self, n: int, rng: torch.Generator):
        return self.take(torch.randint(0, len(self.x), (n,), generator=rng))

    def take(self, idx: torch.Tensor):
        """Rows ``idx``: x, or (x, cond) where there are labels (cond through ``cond_fn`` if set)."""
        if self.labels is None:
            return self.x[idx]
        cond = self.labels[idx]
        return self.x[idx], (self.cond_fn(cond) if self.cond_fn is not None else cond)


class TeacherSampleCache:
    """Teacher samples and their starting noise, made on first use (or loaded from the run directory).

    ``draw`` serves the head's "real" side; ``draw_pairs`` the regression term's pairs.
    """

    def __init__(self, teacher, config, run_dir, device, progress: bool):
        self.teacher, self.config, self.device, self.progress = teacher, config, device, progress
        self.path = Path(run_dir) / CACHE_FILE if run_dir is not None else None
        self._source: TensorSource | None = None
        self.noise: torch.Tensor | None = None

    def _build(self) -> TensorSource:
        teacher, d = self.teacher, self.config.data
        tensors = load_safetensors(self.path)[0] if self.path is not None and self.path.is_file() else {}
        if "noise" not in tensors:  # absent, or written before the noise was kept: (re)make it
            x, labels, noise = make_teacher_samples(teacher, self.config, d.cache_size,
                                                    seed=self.config.train.seed + 7919,
                                                    device=self.device, progress=self.progress)
            tensors = {"x": x, "noise": noise} if labels is None else {"x": x, "noise": noise, "labels": labels}
            if self.path is not None:
                atomic_save(tensors, self.path)
        self.noise = tensors["noise"]
        cond_fn = None
        if getattr(teacher, "cond_kind", "none") == "text":
            cond_fn = lambda idx: teacher.prompt_embeds.cpu()[idx]  # noqa: E731
        return TensorSource(tensors["x"], tensors.get("labels"), cond_fn)

    def _ready(self) -> TensorSource:
        if self._source is None:
            self._source = self._build()
        return self._source

    def draw(self, n: int, rng: torch.Generator):
        return self._ready().draw(n, rng)

    def draw_pairs(self, n: int, rng: torch.Generator):
        """``n`` (noise z, teacher sample from ``sigma_max z``, cond) triples, with replacement.

        Shapes: z and x (n, *sample_shape); cond (n,) labels, (n, L, D) prompt embeddings or None.
        """
        source = self._ready()
        idx = torch.randint(0, len(source), (n,), generator=rng)
        rows = source.take(idx)
        x, cond = rows if isinstance(rows, tuple) else (rows, None)
        return self.noise[idx], x, cond


def pair_source(teacher, config, run_dir, device, progress: bool) -> TeacherSampleCache:
    """The teacher-sample cache for regression pairs (shared with the head's real side when data-free)."""
    source = getattr(teacher, "real_source", None)
    if isinstance(source, TeacherSampleCache):
        return source
    return TeacherSampleCache(teacher, config, run_dir, device, progress)


@torch.no_grad()
def make_teacher_samples(teacher, config, n: int, seed: int, device="cpu", progress: bool = True,
                         steps: int | None = None, labels: torch.Tensor | None = None):
    """``n`` teacher samples with the deterministic Heun sampler.

    Returns (x (n, ...) CPU, labels, noise (n, ...) CPU): sample ``i`` is the ODE solution
    from ``sigma_max * noise[i]``. labels: class ids (class teachers) or prompt indices
    (text teachers), drawn with ``seed`` unless given; None for unconditional teachers.
    """
    rng = torch.Generator().manual_seed(seed)
    kind = getattr(teacher, "cond_kind", "none")
    if labels is None and kind == "class":
        labels = torch.randint(0, teacher.num_classes, (n,), generator=rng)
    elif labels is None and kind == "text":
        labels = torch.randint(0, len(teacher.prompts), (n,), generator=rng)
    lo, hi = getattr(teacher.network, "sigma_range", (config.schedule.sigma_min, config.schedule.sigma_max))
    sched = dataclasses.replace(config.schedule, sigma_min=max(config.schedule.sigma_min, lo),
                                sigma_max=min(config.schedule.sigma_max, hi))
    batch = config.data.cache_batch
    out, noise = [], []
    for start in tqdm(range(0, n, batch), desc="teacher samples", disable=not progress, leave=False):
        k = min(batch, n - start)
        z = torch.randn(k, *teacher.sample_shape, generator=rng).to(device)
        cond = None
        if labels is not None:
            cond = labels[start:start + k].to(device)
            if kind == "text":
                cond = teacher.prompt_embeds[cond]
        out.append(edm_sample(teacher.denoise, z, sched, steps or config.data.cache_steps, cond).cpu())
        noise.append(z.cpu())
    return torch.cat(out), labels, torch.cat(noise)


def attach_real_source(teacher, config, run_dir, device, progress: bool) -> None:
    """Give a network teacher its real-sample source (data set or lazy teacher cache)."""
    if config.data.dataset:
        teacher.real_source = load_dataset_source(config.data.dataset, teacher)
    else:
        teacher.real_source = TeacherSampleCache(teacher, config, run_dir, device, progress)


def load_dataset_source(name: str, teacher) -> TensorSource:
    if name in ("digits", "digits16"):
        x, y = load_digits(size=16 if name == "digits16" else 8)
        if tuple(x.shape[1:]) != tuple(teacher.sample_shape):
            raise OnestepError(f"data set '{name}' has shape {tuple(x.shape[1:])} but the teacher makes "
                               f"{tuple(teacher.sample_shape)}")
        return TensorSource(x, y if teacher.num_classes else None)
    raise OnestepError(f"config key 'data.dataset': unknown data set '{name}' (known: digits, digits16)")


def load_digits(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 handwritten digits in [-1, 1]: (N, 1, size, size), labels (N,).

    ``size=16`` upsamples bilinearly (the optional 16x16 variant).
    """
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0 * 2 - 1
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, torch.tensor(data.target, dtype=torch.long)
