"""Integrity of a written pipeline directory: ``checksums.json`` records the sha256 of every
weights file when onestep writes the directory; loading refuses a directory whose files differ
(a flipped bit, a truncated download, zeroed tensors). Standard library only (bundled into every
export's ``pipeline.py``); a directory without ``checksums.json`` (a stock diffusers pipeline) is
not checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHECKSUMS = "checksums.json"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory) -> Path:
    """Record the sha256 of every ``*.safetensors`` under ``directory`` in its checksums.json."""
    directory = Path(directory)
    sums = {str(p.relative_to(directory)): file_sha256(p) for p in sorted(directory.rglob("*.safetensors"))}
    path = directory / CHECKSUMS
    path.write_text(json.dumps(sums, indent=1) + "\n")
    return path


def verify_checksums(directory) -> None:
    """Raise ``ValueError`` (one line) if a file recorded in ``directory``'s checksums.json is missing
    or differs; nothing to check without the file."""
    directory = Path(directory)
    path = directory / CHECKSUMS
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is not valid JSON; the pipeline directory is damaged") from None
    for name, digest in recorded.items():
        target = directory / name
        if not target.is_file():
            raise ValueError(f"{target} is missing ({path} records it); re-export or copy the pipeline again")
        if file_sha256(target) != digest:
            raise ValueError(f"{target} is damaged: its sha256 differs from the one recorded in {path}; "
                             f"re-export or copy the pipeline again")


def verify_loaded(*modules) -> None:
    """Check the pipeline directories the given loaded modules came from (their ``_name_or_path``)."""
    folders = set()
    for module in modules:
        config = getattr(module, "config", None)
        source = config.get("_name_or_path") if hasattr(config, "get") else None
        if isinstance(source, str) and source and Path(source).is_dir():
            folders.add(Path(source).resolve().parent)
    for folder in sorted(folders):
        verify_checksums(folder)
