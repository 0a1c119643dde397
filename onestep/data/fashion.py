"""Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747): 60,000 training and 10,000 test images,
28x28 grey, 10 classes, read with torchvision's ``FashionMNIST`` class.

Where the four idx files are looked for, in this order:

1. ``root`` (the config key ``data.root``) or else ``$ONESTEP_DATA``;
2. the user cache, ``$XDG_CACHE_HOME/onestep`` (default ``~/.cache/onestep``);
3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

A root may hold torchvision's layout (``ROOT/FashionMNIST/raw/*-ubyte``, unpacked) or the four
``.gz`` files (in ``ROOT`` or ``ROOT/FashionMNIST/raw``). Packed files are unpacked once into the
cache: each is checked against torchvision's md5 of the ``.gz`` or, where a distribution
recompressed it (Debian's package does), against the published md5 of the unpacked file, and
written under a temporary name that is renamed into place only when it checks out. With
``download=True`` torchvision fetches them into the cache (needs network).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import torch

from ..errors import OnestepError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
NAME = "fashion-mnist"
SPLITS = {"train": 60000, "test": 10000}
# md5 of the unpacked idx files (the data set's published checksums); torchvision lists those of the .gz
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
HOW_TO_GET = ("install Debian's package (sudo apt-get install dataset-fashion-mnist) or, with network, "
              "pass --download (make fashion does)")


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/onestep`` (default ``~/.cache/onestep``): where unpacked files go."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onestep"


def _gz_md5() -> dict[str, str]:
    from torchvision.datasets import FashionMNIST

    return {Path(name).name: md5 for name, md5 in FashionMNIST.resources}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def _has_unpacked(root: Path) -> bool:
    return all((_raw_dir(root) / name).is_file() for name in RAW_MD5)


def _packed_dir(root: Path) -> Path | None:
    for folder in (root, _raw_dir(root)):
        if all((folder / f"{name}.gz").is_file() for name in RAW_MD5):
            return folder
    return None


def _unpack(packed: Path, cache: Path) -> None:
    """Unpack and check the four ``.gz`` files of ``packed`` into ``cache``'s torchvision layout.

    Each file is written to a temporary name and renamed only once its md5 checks out: a corrupt
    or truncated archive leaves nothing in the cache.
    """
    target = _raw_dir(cache)
    target.mkdir(parents=True, exist_ok=True)
    gz_md5 = _gz_md5()
    for name, raw_md5 in RAW_MD5.items():
        final = target / name
        if final.is_file() and _md5(final) == raw_md5:
            continue
        source = packed / f"{name}.gz"
        tmp = target / f".{name}.{os.getpid()}.tmp"
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):  # noqa: B023 (read at once)
                    digest.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != raw_md5 and _md5(source) != gz_md5.get(source.name):
                raise OnestepError(f"{source} is not Fashion-MNIST's {name} (md5 mismatch); replace it "
                                   f"(reinstall dataset-fashion-mnist or use --download)")
            os.replace(tmp, final)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise OnestepError(f"cannot unpack {source}: corrupt or truncated ({type(exc).__name__}: "
                               f"{str(exc)[:80]}); replace it (reinstall dataset-fashion-mnist or use "
                               f"--download)") from None
        finally:
            tmp.unlink(missing_ok=True)


def _check_unpacked(root: Path) -> None:
    for name, raw_md5 in RAW_MD5.items():
        path = _raw_dir(root) / name
        if _md5(path) != raw_md5:
            raise OnestepError(f"{path} is corrupt or truncated (md5 mismatch); delete it and run again "
                               f"(it is unpacked anew), or replace it")


def _candidates(root: str | Path | None) -> list[tuple[Path, str]]:
    given = root if root is not None else os.environ.get("ONESTEP_DATA")
    found = []
    if given:
        found.append((Path(given).expanduser(), "data.root" if root is not None else "$ONESTEP_DATA"))
    found += [(cache_root(), "the user cache"), (SYSTEM_DIR, "Debian's dataset-fashion-mnist")]
    return found


def locate(root: str | Path | None = None, download: bool = False) -> Path:
    """A root whose ``FashionMNIST/raw/`` holds the four checked, unpacked idx files.

    Raises ``OnestepError`` (one line: where it looked, how to get the data) when none does.
    """
    cache = cache_root()
    for place, _ in _candidates(root):
        if place.is_dir() and _has_unpacked(place):
            _check_unpacked(place)
            return place
        packed = _packed_dir(place) if place.is_dir() else None
        if packed is not None:
            _unpack(packed, cache)
            return cache
    if download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(cache), train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise OnestepError(f"cannot download Fashion-MNIST into {cache} ({type(exc).__name__}: "
                               f"{str(exc)[:80]}); {HOW_TO_GET.split(' or, ')[0]}") from None
        _check_unpacked(cache)
        return cache
    where = ", ".join(str(p) for p, _ in _candidates(root))
    raise OnestepError(f"Fashion-MNIST not found (looked in {where}); {HOW_TO_GET}")


def load_fashion_mnist(split: str = "train", root: str | Path | None = None,
                       download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [-1, 1] and labels (N,) of the ``train`` (60,000) or ``test``
    (10,000) split."""
    if split not in SPLITS:
        raise OnestepError(f"Fashion-MNIST split '{split}' does not exist; use one of {', '.join(SPLITS)}")
    from torchvision.datasets import FashionMNIST

    found = locate(root, download)
    try:
        data = FashionMNIST(str(found), train=split == "train", download=False)
    except (AssertionError, RuntimeError, ValueError) as exc:
        raise OnestepError(f"cannot read Fashion-MNIST under {found} ({type(exc).__name__}); delete "
                           f"{_raw_dir(found)} and run again") from None
    x = data.data.to(torch.float32)[:, None] / 127.5 - 1.0
    return x, data.targets.to(torch.long)
