"""Where outputs may go: checks that refuse, in one line, a path that cannot be written or whose
writing would destroy something the user made. Nothing here deletes anything."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import OnestepError

# OSError numbers that are the user's situation, not a bug: reported in one line by the CLI
USER_OS_ERRORS = {errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                  errno.EPERM, errno.ENAMETOOLONG, errno.EDQUOT}


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_dir(path, what: str) -> Path:
    """``path`` is, or can be created as, a directory this process may write in."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OnestepError(f"{what} {path} is a dangling symbolic link (to {os.readlink(path)}); remove it or "
                           f"choose another path")
    if path.exists() and not path.is_dir():
        raise OnestepError(f"{what} {path} is a file, not a directory; choose another path")
    base = _first_existing(path)
    if not base.is_dir():
        raise OnestepError(f"{what} {path} lies under the file {base}; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OnestepError(f"{what} {path}: {base} is not writable")
    return path


def writable_file(path, what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` names a file (not a directory) that can be created or replaced."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise OnestepError(f"{what} must end in {' or '.join(suffixes)}, got '{path.name}'")
    if path.is_dir():
        raise OnestepError(f"{what} {path} is a directory; give a file name")
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise OnestepError(f"{what} {path} lies under the file {base}; choose another path")
    if not os.access(base, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OnestepError(f"{what} {path} is not writable")
    return path


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


LORA_MARKER = "onestep_lora.json"  # in a LoRA export: {"_class_name": "OneStepLoRA", ...}


def pipeline_class(directory: Path) -> str | None:
    """The ``_class_name`` of a pipeline directory's model_index.json, or of a onestep LoRA export's
    marker file (None: neither, or unreadable)."""
    import json

    index = None
    for name in ("model_index.json", LORA_MARKER):
        try:
            index = json.loads((Path(directory) / name).read_text())
            break
        except (OSError, ValueError):
            continue
    if index is None:
        return None
    name = index.get("_class_name") if isinstance(index, dict) else None
    if isinstance(name, list) and len(name) == 2:  # [module, class]: a pipeline with its own code
        name = name[1]
    return name if isinstance(name, str) else None


def new_output_dir(path, what: str, overwrite: bool = False, protect: tuple = (), kind: str = "OneStepPipeline") -> Path:
    """A directory to write whole (an export, a trained teacher): it must not exist, or be empty, or
    (with ``overwrite``) be an earlier output of the same kind (a pipeline whose model_index.json
    names ``kind``). It may not be a symbolic link, the working directory, a parent of it, or
    overlap any directory in ``protect`` (a run, its teacher)."""
    path = Path(path)
    if path.is_symlink():  # (dangling ones too) replacing a link's target through it is never asked for
        raise OnestepError(f"{what} {path} is a symbolic link; give the directory itself ({os.path.realpath(path)}) "
                           f"or a new path")
    path = writable_dir(path, what)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if _within(cwd, resolved):
        raise OnestepError(f"{what} {path} is the working directory or one of its parents; name a new directory")
    for other in protect:  # a new subfolder of a protected directory (RUN/pipeline) is fine
        if other and _within(Path(other).resolve(), resolved):
            raise OnestepError(f"{what} {path} would replace {other}; write it to a separate directory")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise OnestepError(f"{what} {path} exists and is not empty; choose a new path or pass --overwrite")
        found = pipeline_class(path)
        if found != kind:
            was = f"a {found}" if found else "not a pipeline"
            raise OnestepError(f"{what} {path} is not an earlier output ({was}; --overwrite replaces only a "
                               f"{kind} written by onestep); choose a new path")
    partial = path.with_name(path.name + ".partial")
    if partial.exists() and not (partial.is_dir() and (not any(partial.iterdir()) or pipeline_class(partial))):
        raise OnestepError(f"{partial} exists and is not a leftover of an interrupted write; move it away or "
                           f"choose another path")
    return path
