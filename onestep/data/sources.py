"""Sources of "real" samples for the discriminator, and the teacher's (noise, sample) pairs.

Every source has ``draw(n, rng) -> (x (n, *shape), cond or None)``, drawn uniformly with
replacement. With ``data.dataset`` set, real samples are data set images (with their labels);
otherwise they are exact samples (analytic teachers) or a cache of teacher multi-step
samples, made once with the EDM Heun sampler and stored in the run directory. The cache keeps
each sample's starting noise, so it also serves the regression term's (noise, teacher output)
pairs. A pairs file made once for a teacher (``onestep pairs``, ``data.pairs``) stands in for the
run's own cache: it is read, checked against the teacher, and never rewritten.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.io import atomic_save, load_safetensors
from ..core.modules import fingerprint
from ..core.schedule import ScheduleConfig
from ..errors import OnestepError
from ..sampling import teacher_samples
from ..teachers.gmm import ExactSamples
from ..teachers.kinds import digest


class TensorSource:
    """Samples x (N, ...) with optional labels (N,); ``cond_fn`` maps labels to conditioning."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None, cond_fn=None):
        self.x, self.labels, self.cond_fn = x, labels, cond_fn

    def __len__(self) -> int:
        return len(self.x)

    def draw(self, n: int, rng: torch.Generator):
        return self.take(torch.randint(0, len(self.x), (n,), generator=rng))

    def take(self, idx: torch.Tensor):
        """Rows ``idx``: (x, cond) with cond None where there are no labels."""
        if self.labels is None:
            return self.x[idx], None
        cond = self.labels[idx]
        return self.x[idx], (self.cond_fn(cond) if self.cond_fn is not None else cond)


class TeacherSampleCache:
    """Teacher ODE samples and their starting noise, made on first use (or loaded from ``path``).

    ``draw`` serves the discriminator's "real" side; ``draw_pairs`` the regression term's pairs.
    Sample ``i`` is the Heun solution (``steps`` steps) from ``sigma_max * noise[i]``.
    ``fixed``: ``path`` is a pairs file made beforehand (``save_pairs``): it is loaded and checked
    against the teacher (its weights' fingerprint and the schedule), never made or rewritten here.
    """

    def __init__(self, teacher, size: int, steps: int, batch_size: int, seed: int, schedule: ScheduleConfig,
                 path: Path | None = None, device="cpu", progress: bool = True, tag: str = "",
                 fixed: bool = False):
        self.teacher, self.size, self.steps, self.batch_size = teacher, size, steps, batch_size
        self.seed, self.schedule, self.path, self.device, self.progress = seed, schedule, path, device, progress
        self.tag = tag  # what the samples were made from: a stored cache with another tag is remade
        self.fixed = fixed
        self._source: TensorSource | None = None
        self.noise: torch.Tensor | None = None

    def _make(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Noise, labels and the teacher's samples from them; with ``dtype`` float16 the noise is
        rounded to it before the ODE is solved, so the stored pairs stay pairs of the teacher's map
        (only the samples' own rounding, below 1e-3 in [-1, 1], remains)."""
        rng = torch.Generator().manual_seed(self.seed)
        labels = self.teacher.sample_labels(self.size, rng)
        shape = self.teacher.sample_shape
        noise = torch.cat([torch.randn(min(self.batch_size, self.size - start), *shape, generator=rng)
                           for start in range(0, self.size, self.batch_size)]).to(dtype)
        x = teacher_samples(self.teacher, noise.float(), labels, self.schedule, self.steps, self.batch_size,
                            device=self.device, progress=self.progress, desc="teacher samples").to(dtype)
        return {"x": x, "noise": noise} if labels is None else {"x": x, "noise": noise, "labels": labels}

    def pair_metadata(self) -> dict[str, str]:
        """What a pairs file records of its making, checked when a run reads it (``fixed``)."""
        return {"teacher_fingerprint": repr(fingerprint(self.teacher.network)), "steps": str(self.steps),
                "schedule": self.tag, "conditioning": self._conditioning(), "seed": str(self.seed)}

    def _conditioning(self) -> str:
        """What shapes the teacher's map besides its network's weights: its guidance scale and prompts."""
        return digest(float(getattr(self.teacher, "guidance_scale", 1.0)), list(getattr(self.teacher, "prompts", None) or []))

    def check(self) -> None:
        """Load a pairs file now (``fixed``), raising its one-line error before a run writes anything;
        without a teacher (not built yet), only that the file exists."""
        if self.fixed and self.teacher is None:
            self._missing()
        elif self.fixed:
            self._ready()

    def _missing(self) -> None:
        if self.path is None or not self.path.is_file():
            raise OnestepError(f"data.pairs {self.path}: no such file; make it with `onestep pairs --config CONFIG "
                               f"--output FILE`, or --set data.pairs=null to make them in the run")

    def _load_fixed(self) -> dict[str, torch.Tensor]:
        where = f"data.pairs {self.path}"
        self._missing()
        tensors, meta = load_safetensors(self.path)
        if not {"x", "noise"} <= set(tensors) or len(tensors["x"]) != len(tensors["noise"]) or not len(tensors["x"]):
            raise OnestepError(f"{where} is not a pairs file (it needs tensors x and noise of equal length); "
                               f"make one with `onestep pairs`")
        made_for = float(meta.get("teacher_fingerprint", "nan"))
        here = fingerprint(self.teacher.network)
        if not abs(made_for - here) <= 1e-9 * max(abs(here), 1.0):
            raise OnestepError(f"{where} was made from another teacher (weights fingerprint {made_for:.10g}, this "
                               f"teacher's {here:.10g}); make pairs for this teacher with `onestep pairs`, or --set data.pairs=null "
                               f"to make them in the run")
        if meta.get("schedule") != self.tag:
            raise OnestepError(f"{where} was made with another noise schedule than this config's; make pairs for "
                               f"it with `onestep pairs`, or --set data.pairs=null to make them in the run")
        if meta.get("conditioning", self._conditioning()) != self._conditioning():
            raise OnestepError(f"{where} was made with another guidance scale or prompts than this teacher's; make "
                               f"pairs for it with `onestep pairs`, or --set data.pairs=null to make them in the run")
        if tuple(tensors["x"].shape[1:]) != tuple(self.teacher.sample_shape):
            raise OnestepError(f"{where} holds samples of shape {tuple(tensors['x'].shape[1:])}, the teacher makes "
                               f"{tuple(self.teacher.sample_shape)}")
        return {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}

    def _ready(self) -> TensorSource:
        if self._source is None:
            if self.fixed:
                tensors = self._load_fixed()
            else:
                tensors, meta = load_safetensors(self.path) if self.path is not None and self.path.is_file() \
                    else ({}, {})
                stale = self.tag and meta.get("tag", self.tag) != self.tag  # (untagged caches predate the tags)
                if "noise" not in tensors or stale or len(tensors["x"]) == 0:  # absent, old, or made otherwise
                    tensors = self._make()
                    if self.path is not None:
                        atomic_save(tensors, self.path, {"tag": self.tag})
            self.noise = tensors["noise"]
            self._source = TensorSource(tensors["x"], tensors.get("labels"), self.teacher.cond_for)
        return self._source

    def save_pairs(self, path: Path, dtype: torch.dtype = torch.float32) -> int:
        """Make the pairs and write them to ``path`` (atomically) as a pairs file; returns their count."""
        tensors = self._make(dtype)
        atomic_save(tensors, path, self.pair_metadata())
        return len(tensors["x"])

    def draw(self, n: int, rng: torch.Generator):
        return self._ready().draw(n, rng)

    def draw_pairs(self, n: int, rng: torch.Generator):
        """``n`` (noise z, teacher sample from ``sigma_max z``, cond) triples, with replacement.

        Shapes: z and x (n, *sample_shape); cond (n,) labels, (n, L, D) prompt embeddings or None.
        """
        source = self._ready()
        idx = torch.randint(0, len(source), (n,), generator=rng)
        x, cond = source.take(idx)
        return self.noise[idx], x, cond


class Part:
    """A fixed share of a source's samples (drawn from like the source): the discriminator trains
    on ``train`` and is checked on ``holdout``. Lazy: a teacher cache is made on first use."""

    def __init__(self, source, holdout: bool, fraction: float, seed: int):
        self.source, self.holdout, self.fraction, self.seed = source, holdout, fraction, seed
        self._view: TensorSource | None = None

    def _ready(self) -> TensorSource:
        if self._view is None:
            full = self.source._ready() if hasattr(self.source, "_ready") else self.source
            perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed))
            cut = max(1, int(round(len(full) * self.fraction)))
            idx = perm[:cut] if self.holdout else perm[cut:]
            x, cond_labels = full.x[idx], (full.labels[idx] if full.labels is not None else None)
            self._view = TensorSource(x, cond_labels, full.cond_fn)
        return self._view

    def __len__(self) -> int:
        return len(self._ready())

    def draw(self, n: int, rng: torch.Generator):
        return self._ready().draw(n, rng)


def split_holdout(source, fraction: float = 0.1, seed: int = 0):
    """(train, holdout) shares of a finite source; an exact sampler holds out its fresh draws."""
    if isinstance(source, ExactSamples):
        return source, source
    return Part(source, False, fraction, seed), Part(source, True, fraction, seed)
