"""Data sets as real-sample sources: the bundled digits, a folder of images, or an ``.npz`` array.

``data.dataset`` names one of them:

- ``digits`` / ``digits16``: scikit-learn's 1,797 8x8 digits (or upsampled to 16x16), labelled;
- ``fashion-mnist``: Fashion-MNIST's 60,000 28x28 training images (the 10,000 test images are the
  held-out and evaluation split), labelled; where its files are found: ``data.fashion``;
- a folder: image files (PNG/JPEG/BMP/WebP), with labels when they sit in class subfolders
  (``root/<class>/<image>``, classes sorted by name -> label 0, 1, ...);
- an ``.npz`` file: an array ``x`` (or ``images``), (N, H, W), (N, H, W, C) or (N, C, H, W),
  uint8 in [0, 255] or float in [-1, 1], and optional integer labels ``y`` (or ``labels``).
  Read with ``allow_pickle=False``.

Images are resized (bilinear, antialiased) to the teacher's resolution, converted to its
channel count (grey <-> RGB) and mapped to [-1, 1]; latent teachers get them encoded by their VAE.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import OnestepError, OnestepWarning
from .sources import TensorSource

BUNDLED = ("digits", "digits16")  # shipped with the package (scikit-learn)
NAMED = (*BUNDLED, "fashion-mnist")  # data sets known by name
WITH_TEST_SPLIT = ("fashion-mnist",)  # their held-out samples are the test split, not a share of train
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


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


def load_named(name: str, split: str = "train", root=None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A data set known by name: images (N, C, H, W) in [-1, 1] and labels (N,).

    ``split`` (train | test) selects Fashion-MNIST's split; the digits have one set, returned for
    both. ``root`` / ``download``: where Fashion-MNIST's files are (``data.fashion.locate``).
    """
    if name in BUNDLED:
        return load_digits(size=16 if name == "digits16" else 8)
    if name == "fashion-mnist":
        from .fashion import load_fashion_mnist

        return load_fashion_mnist(split, root, download)
    raise OnestepError(f"unknown data set '{name}'; known: {', '.join(NAMED)}")


def _read_folder(root: Path) -> tuple[list[np.ndarray], torch.Tensor | None]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))] if classes else \
        [(f, None) for f in sorted(root.rglob("*"))]
    entries = [(f, y) for f, y in entries if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not entries:
        raise OnestepError(f"config key 'data.dataset': no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    images = []
    for f, _ in entries:
        try:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
        except (UnidentifiedImageError, OSError) as exc:
            raise OnestepError(f"config key 'data.dataset': cannot read image {f} ({type(exc).__name__})") from None
    labels = torch.tensor([y for _, y in entries]) if classes else None
    return images, labels


def check_image_array(x: np.ndarray, where: str, check_range: bool = True) -> None:
    """Refuse, in one line, an image array that is empty, non-finite or (``check_range``) outside
    the documented ranges (uint8 [0, 255]; floats [-1, 1]): such data would train or score
    silently wrong. (Generated samples may overshoot [-1, 1] a little: they are clamped when scored.)"""
    if len(x) == 0:
        raise OnestepError(f"{where} holds no images")
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            raise OnestepError(f"{where} has {int((~finite).sum())} NaN or infinite values; fix or drop those images")
        lo, hi = float(x.min()), float(x.max())
        if check_range and (lo < -1.001 or hi > 1.001):
            raise OnestepError(f"{where}: float images span [{lo:.3g}, {hi:.3g}], outside the documented [-1, 1]; "
                               f"store uint8 [0, 255] or map floats to [-1, 1] (x / 127.5 - 1)")
    elif np.issubdtype(x.dtype, np.integer) and (int(x.min()) < 0 or int(x.max()) > 255):
        raise OnestepError(f"{where}: integer images span [{int(x.min())}, {int(x.max())}], outside [0, 255]")


def _read_npz(path: Path) -> tuple[np.ndarray, torch.Tensor | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in ("x", "images") if k in data.files), None)
            if key is None:
                raise OnestepError(f"config key 'data.dataset': {path} has no array 'x' or 'images' "
                                   f"(found: {', '.join(data.files) or 'none'})")
            x = data[key]
            ykey = next((k for k in ("y", "labels") if k in data.files), None)
            y = data[ykey] if ykey else None
    except (ValueError, OSError) as exc:
        raise OnestepError(f"config key 'data.dataset': cannot read {path} as an .npz of arrays "
                           f"({str(exc).splitlines()[0][:80]})") from None
    if x.ndim not in (3, 4) or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise OnestepError(f"config key 'data.dataset': {path}: images must be a numeric (N, H, W[, C]) or "
                           f"(N, C, H, W) array, got {x.dtype} {x.shape}")
    check_image_array(x, f"config key 'data.dataset': {path}")
    if y is not None and (y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer)):
        raise OnestepError(f"config key 'data.dataset': {path}: labels must be integers, one per image")
    return x, (torch.from_numpy(y.astype(np.int64)) if y is not None else None)


def _fit(x: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) in [-1, 1] -> (channels, *size): grey <-> RGB, bilinear antialiased resize."""
    x = x[:3]
    if x.shape[0] != channels and channels in (1, 3):
        x = x.mean(0, keepdim=True).expand(channels, -1, -1)
    if tuple(x.shape[1:]) != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(-1, 1)


def _as_images(images) -> list[torch.Tensor]:
    """Arrays (N, H, W), (N, H, W, C), (N, C, H, W) or a list of (H, W[, C]) -> (C, H, W) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4 and images.shape[1] in (1, 3, 4) and images.shape[-1] not in (1, 3, 4):
            images = images.transpose(0, 2, 3, 1)  # N, C, H, W -> N, H, W, C
        images = list(images)
    out = []
    for a in images:
        t = torch.from_numpy(np.ascontiguousarray(a))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        out.append(t.float() / 127.5 - 1 if not torch.is_floating_point(t) else t.float())
    return out


def dataset_source(name: str, teacher, split: str = "train", root=None, download: bool = False) -> TensorSource:
    """The real samples ``data.dataset`` names, shaped like the teacher's samples.

    Images are fitted to ``teacher.image_shape`` and, for latent teachers, encoded by
    ``teacher.encode``. Labels are kept where the teacher is class-conditional (and checked
    against its class count). ``split``, ``root``, ``download``: as ``load_named``.
    """
    if name in NAMED:
        images, y = load_named(name, split, root, download)
    else:
        path = Path(name)
        if path.is_dir():
            images, y = _read_folder(path)
        elif path.is_file() and path.suffix == ".npz":
            images, y = _read_npz(path)
        else:
            raise OnestepError(f"config key 'data.dataset': '{name}' is neither a bundled data set "
                               f"({', '.join(NAMED)}), an image folder nor an .npz file")
        images = _as_images(images)
    c, h, w = teacher.image_shape
    if torch.is_tensor(images) and tuple(images.shape[1:]) == (c, h, w):
        x = images  # a named data set at the teacher's resolution
    else:
        x = torch.stack([_fit(im, c, (h, w)) for im in images])
    x = teacher.encode(x)
    if tuple(x.shape[1:]) != tuple(teacher.sample_shape):
        raise OnestepError(f"config key 'data.dataset': '{name}' gives samples of shape {tuple(x.shape[1:])} but the "
                           f"teacher makes {tuple(teacher.sample_shape)}")
    if y is not None and teacher.num_classes:
        if int(y.min()) < 0 or int(y.max()) >= teacher.num_classes:
            raise OnestepError(f"config key 'data.dataset': labels of '{name}' span {int(y.min())}..{int(y.max())} "
                               f"but the teacher has {teacher.num_classes} classes")
        return TensorSource(x, y)
    if teacher.num_classes:
        raise OnestepError(f"config key 'data.dataset': the teacher is class-conditional but '{name}' has no "
                           f"labels (use class subfolders or a 'y' array)")
    if y is not None:
        warnings.warn(f"data.dataset '{name}': its labels are not used (the teacher is unconditional)",
                      OnestepWarning, stacklevel=2)
    return TensorSource(x, None)
