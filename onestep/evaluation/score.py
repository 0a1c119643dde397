"""``onestep eval``: FID, KID, IS and precision/recall of a run or an exported pipeline against a
reference (images, or statistics cached under a name), with per-index seeds.

The reference is ``digits`` / ``digits16`` (the bundled set), ``fashion-mnist`` (its 10,000 test
images), an image folder, a ``.npy`` or ``.npz`` array, or the name of statistics cached by an
earlier evaluation. Its features are cached (torch-fidelity's cache, under ``--cache-root``) so it
is featurised once. Features: the bundled digits classifier for 8x8 / 16x16 grey samples, the
bundled Fashion-MNIST classifier for 28x28 grey samples, InceptionV3 otherwise (weights from a
local path or torch's hub cache, never downloaded here).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..core.samplers import generate
from ..core.tensors import cycled_labels
from ..data.datasets import BUNDLED, NAMED, load_named
from ..errors import OnestepError
from ..export import load_pipeline
from ..runs import conditioning, default_device, load_generator
from .fidelity import DEFAULT_CACHE_ROOT, METRICS, compute_metrics, load_images

NAMES = {"frechet_inception_distance": "FID", "kernel_inception_distance_mean": "KID",
         "kernel_inception_distance_std": "KID std", "inception_score_mean": "IS", "inception_score_std": "IS std",
         "precision": "precision", "recall": "recall", "f_score": "F-score"}


def run_samples(run, ema: bool, n: int, seed: int, batch_size: int) -> torch.Tensor:
    """``n`` images in [-1, 1] of a run's generator (per-index seeds; labels / prompts cycle)."""
    device = default_device()
    generator, cfg, _ = load_generator(run, ema=ema, device=device)
    network = generator.network
    cond_fn, decode = conditioning(network, cfg)
    if decode is None:
        raise OnestepError(f"run {run} does not make images; FID needs an image run")
    x = generate(generator, n, seed, tuple(network.sample_shape), cond_fn=cond_fn, batch_size=batch_size,
                 device=device)
    return torch.cat([decode(x[i:i + batch_size].to(device)).cpu() for i in range(0, n, batch_size)])


def pipeline_samples(path, n: int, seed: int, batch_size: int, prompts: list[str] | None = None) -> torch.Tensor:
    """``n`` images in [-1, 1] of an exported pipeline (per-index generators)."""
    pipe = load_pipeline(path, device=default_device())
    classes = getattr(pipe.unet.config, "num_class_embeds", None) or 0
    if pipe.text_encoder is not None and not prompts:
        raise OnestepError("this pipeline is text-to-image: pass --prompts FILE (one prompt per line)")
    chunks = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        kwargs = {"generator": pipe.index_generators(seed, k, start), "output_type": "pt"}
        if prompts:
            kwargs["prompt"] = [prompts[i] for i in cycled_labels(start, k, len(prompts)).tolist()]
        elif classes:
            kwargs["class_labels"] = cycled_labels(start, k, classes).tolist()
        else:
            kwargs["batch_size"] = k
        chunks.append(pipe(**kwargs).images * 2 - 1)
    return torch.cat(chunks)


def reference(spec: str, cache_root: Path, features: str, download: bool = False) -> tuple[torch.Tensor | None, str]:
    """(images or None when only cached statistics exist, the cache name). A named data set gives
    its test split (Fashion-MNIST's 10,000 test images; the digits' only set)."""
    if spec in NAMED:
        return load_named(spec, "test", download=download)[0], spec if spec in BUNDLED else f"{spec}-test"
    path = Path(spec)
    if path.exists():
        stat = path.stat()
        tag = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return load_images(path, reference=True), f"{path.stem}-{tag}"
    root = Path(cache_root)
    if root.is_dir() and any(f"{spec}-{features}" in p.name for p in root.iterdir()):  # literal, never a pattern
        return None, spec
    raise OnestepError(f"--ref {spec}: neither images ({', '.join(NAMED)}, a folder, .npy or .npz) nor statistics "
                       f"cached under that name in {cache_root}")


def _shape(x: torch.Tensor) -> str:
    c, h, w = x.shape[1:]
    return f"{h}x{w} {'grey' if c == 1 else 'RGB' if c == 3 else f'{c}-channel'}"


def default_features(images: torch.Tensor) -> str:
    """digits for 8x8 / 16x16 grey images, fashion for 28x28 grey ones, inception otherwise."""
    if images.shape[1] == 1 and images.shape[-1] in (8, 16):
        return "digits"
    if images.shape[1] == 1 and images.shape[-1] == 28:
        return "fashion"
    return "inception"


def evaluate(samples: torch.Tensor, ref: str, features: str | None = None, metrics=("fid", "kid", "isc", "prc"),
             cache_root=None, weights=None, batch_size: int = 256, download: bool = False) -> dict:
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise OnestepError(f"--metrics: unknown {sorted(unknown)} (valid: {', '.join(METRICS)})")
    samples = load_images(samples)  # (a tensor, or a file or folder of them)
    features = features or default_features(samples)
    cache_root = Path(cache_root or DEFAULT_CACHE_ROOT)
    ref_images, name = reference(ref, cache_root, features, download)
    if ref_images is None:  # cached statistics: torch-fidelity reads them without touching the images
        ref_images = torch.zeros(1, *samples.shape[1:])
    elif ref_images.shape[2:] != samples.shape[2:] or not {ref_images.shape[1], samples.shape[1]} <= {1, 3}:
        # (grey and RGB compare as RGB: grey images are repeated to three channels)
        raise OnestepError(f"--ref {ref}: its images are {_shape(ref_images)} but the samples are {_shape(samples)}; "
                           f"compare like with like (resize the reference on purpose first)")
    out = compute_metrics(samples, ref_images, features, tuple(metrics), reference_name=name, cache_root=cache_root,
                          weights=weights, batch_size=batch_size, kid_subset_size=min(1000, len(samples)))
    return {"features": features, "reference": ref, **out}


def table(result: dict) -> str:
    rows = [(NAMES.get(k, k), v) for k, v in result.items()
            if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {float(v):.6g}" for k, v in rows)
