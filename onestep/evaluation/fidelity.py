"""FID / KID / Inception Score / precision-recall through torch-fidelity.

Feature extractors by name:
- ``inception``: torch-fidelity's InceptionV3 (``inception-v3-compat``). Its weights
  (``weights-inception-2015-12-05-6726825d.pth``) come from a local path or the torch hub
  cache; they are never downloaded here, and they are checked to load with
  ``torch.load(weights_only=True)`` (no pickled code) before torch-fidelity reads them.
- ``digits`` / ``fashion``: the bundled classifiers of 8x8 digits (``evaluation.digits_features``)
  and of 28x28 Fashion-MNIST (``evaluation.fashion_features``), registered with torch-fidelity's
  feature-extractor registry as ``onestep-digits`` / ``onestep-fashion``; their 128-d penultimate
  layer is the FD's feature space (the same Frechet distance code as FID's).

Inputs (``samples`` / ``reference``): a tensor (N, C, H, W) in [-1, 1], a ``.npy`` file of
one, or a folder of PNG images. Reference statistics are cached by name
(``reference_name`` + ``cache_root``), so a reference set is featurised once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import OnestepError
from ..resources import DIGITS_FEATURES, FASHION_FEATURES
from . import digits_features, fashion_features

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# our classifier feature networks: name -> (torch-fidelity name, loader(weights path), default weights, size)
CLASSIFIERS = {
    "digits": ("onestep-digits", digits_features.load_classifier, DIGITS_FEATURES, 8),
    "fashion": ("onestep-fashion", fashion_features.load_classifier, FASHION_FEATURES, 28),
}
FEATURES = ("inception", *CLASSIFIERS)
METRICS = ("fid", "kid", "isc", "prc")
DEFAULT_CACHE_ROOT = Path.home() / ".cache" / "onestep" / "fidelity"


class ImageTensorDataset(Dataset):
    """(N, C, H, W) in [-1, 1] -> uint8 (3, H, W) items (grey images repeated to RGB)."""

    def __init__(self, x: torch.Tensor):
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        self.x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def load_images(source, reference: bool = False) -> torch.Tensor:
    """A tensor, ``.npy`` / ``.npz`` file or image folder as (N, C, H, W) in [-1, 1]; empty,
    non-finite, mixed-size and unreadable inputs are refused in one line, and a ``reference``
    outside the documented range too (generated samples may overshoot: they are clamped)."""
    from ..data.datasets import check_image_array

    if torch.is_tensor(source):
        return source.float()
    path = Path(source)
    if path.is_file() and path.suffix in (".npy", ".npz"):
        try:
            if path.suffix == ".npy":
                array = np.load(path, allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as data:
                    key = next((k for k in ("x", "images") if k in data.files), None)
                    if key is None:
                        raise OnestepError(f"{path} has no array 'x' or 'images' (found: {', '.join(data.files) or 'none'})")
                    array = data[key]
        except ValueError:
            raise OnestepError(f"{path} holds Python objects (a pickle) or is not an array file; onestep reads "
                               f"numeric arrays only") from None
        if not (np.issubdtype(array.dtype, np.number) and array.ndim == 4):
            raise OnestepError(f"{path}: expected a numeric (N, C, H, W) array, got {array.dtype} {array.shape}")
        check_image_array(array, str(path), check_range=reference)
        x = torch.from_numpy(array)
        return x.float() / 127.5 - 1 if not torch.is_floating_point(x) else x.float()
    if path.is_dir():
        from PIL import Image, UnidentifiedImageError

        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise OnestepError(f"no images in {path}")
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
            except (UnidentifiedImageError, OSError):
                raise OnestepError(f"{f} is not an image onestep can read (in the reference folder {path})") from None
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise OnestepError(f"images in {path} differ in size ({shapes[0]} and {shapes[-1]}); resize them to one "
                               f"size first")
        x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1
        return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    raise OnestepError(f"cannot read images from {source}: expected a .npy or .npz file or an image folder")


def _classifier_extractor_class(load, size: int):
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity extractor: uint8 (B, 3, H, W) -> a grey classifier's features / logits."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.model = load(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits" if metric == "isc" else "features"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, size, size, dtype=torch.uint8)

        def forward(self, x):
            x = x[:, :1].float() / 127.5 - 1
            feats = self.model.features(x)
            out = {"features": feats, "logits": self.model.head(feats)}
            return tuple(out[name] for name in self.features_list)

    return ClassifierFeatureExtractor


def register_extractors() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    for name, load, _, size in CLASSIFIERS.values():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, _classifier_extractor_class(load, size))


def inception_weights(path: str | Path | None = None) -> Path:
    """A checked local InceptionV3 weights file, or a one-line error saying where to put it."""
    candidates = [Path(path)] if path else []
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    candidates.append(torch_home / "hub" / "checkpoints" / INCEPTION_FILE)
    for c in candidates:
        if c.is_file():
            try:
                torch.load(c, map_location="cpu", weights_only=True)
            except Exception:
                raise OnestepError(f"{c} does not load as plain weights (torch.load weights_only=True)") from None
            return c
    raise OnestepError(
        f"InceptionV3 weights not found: put {INCEPTION_FILE} (from torch-fidelity's releases) in "
        f"{torch_home / 'hub' / 'checkpoints'} or pass --inception-weights PATH; or use --features digits or fashion"
    )


def extractor_kwargs(features: str, weights: str | Path | None = None) -> dict:
    """torch-fidelity keyword arguments selecting a feature extractor by our name."""
    if features in CLASSIFIERS:
        register_extractors()
        name, _, default, _ = CLASSIFIERS[features]
        return {"feature_extractor": name, "feature_extractor_weights_path": str(weights or default)}
    if features == "inception":
        return {"feature_extractor": "inception-v3-compat",
                "feature_extractor_weights_path": str(inception_weights(weights))}
    raise OnestepError(f"unknown feature extractor '{features}' (valid: {', '.join(FEATURES)})")


def compute_metrics(samples, reference, features: str = "digits", metrics=("fid",), reference_name: str | None = None,
                    cache_root: str | Path | None = None, weights: str | Path | None = None,
                    batch_size: int = 256, kid_subset_size: int | None = None) -> dict:
    """Metrics of ``samples`` against ``reference`` in one extractor's feature space.

    Returns torch-fidelity's keys (``frechet_inception_distance`` is the Frechet distance in
    the chosen features, also for ``digits``), plus ``num_samples``.
    """
    import torch_fidelity

    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise OnestepError(f"unknown metric(s) {sorted(unknown)} (valid: {', '.join(METRICS)})")
    x = load_images(samples)
    ref = load_images(reference, reference=True) if reference is not None else None
    kwargs = extractor_kwargs(features, weights)
    kwargs.update(fid="fid" in metrics, kid="kid" in metrics, isc="isc" in metrics, prc="prc" in metrics,
                  cuda=torch.cuda.is_available(), save_cpu_ram=True, verbose=False, batch_size=batch_size,
                  input1=ImageTensorDataset(x))
    if ref is not None:
        kwargs["input2"] = ImageTensorDataset(ref)
        if reference_name:
            kwargs.update(input2_cache_name=f"{reference_name}-{features}", cache=True,
                          cache_root=str(cache_root or DEFAULT_CACHE_ROOT))
    if "kid" in metrics:
        n = min(len(x), len(ref)) if ref is not None else len(x)
        kwargs["kid_subset_size"] = kid_subset_size or min(1000, n)
    out = dict(torch_fidelity.calculate_metrics(**kwargs))
    out["num_samples"] = len(x)
    return out


def feature_extractor(features: str = "digits", weights=None):
    """The named extractor (CPU), returning the FD feature layer: call it once, reuse it."""
    from torch_fidelity.utils import create_feature_extractor

    kwargs = extractor_kwargs(features, weights)
    name = kwargs.pop("feature_extractor")
    layer = "features" if features in CLASSIFIERS else "2048"
    return create_feature_extractor(name, [layer], cuda=False, verbose=False, **kwargs)


def features_of(x: torch.Tensor, features: str = "digits", weights=None, batch_size: int = 512,
                extractor=None) -> np.ndarray:
    """Feature vectors (N, F) float64 of images (N, C, H, W) in [-1, 1] with the named extractor
    (or ``extractor``, from ``feature_extractor``)."""
    ext = extractor if extractor is not None else feature_extractor(features, weights)
    ds = ImageTensorDataset(x)
    out = []
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            out.append(ext(ds.x[i:i + batch_size])[0].double())
    return torch.cat(out).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, F) and b (M, F)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    stats = [{"mu": f.mean(0), "sigma": np.cov(f, rowvar=False)} for f in (a, b)]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"])


def make_reference(name: str, images, features: str = "digits", cache_root: str | Path | None = None,
                   weights=None, batch_size: int = 256) -> Path:
    """Featurise a reference set once into torch-fidelity's cache under ``name``."""
    from torch_fidelity.utils import (
        create_feature_extractor,
        extract_featuresdict_from_input_id_cached,
    )

    kwargs = extractor_kwargs(features, weights)
    ext_name = kwargs.pop("feature_extractor")
    root = Path(cache_root or DEFAULT_CACHE_ROOT)
    layers = ["features", "logits"] if features in CLASSIFIERS else ["2048", "logits_unbiased"]
    ext = create_feature_extractor(ext_name, layers, cuda=torch.cuda.is_available(), verbose=False, **kwargs)
    extract_featuresdict_from_input_id_cached(
        2, ext, input2=ImageTensorDataset(load_images(images)), input2_cache_name=f"{name}-{features}",
        cache=True, cache_root=str(root), batch_size=batch_size, cuda=torch.cuda.is_available(),
        save_cpu_ram=True, verbose=False, **kwargs)
    return root
