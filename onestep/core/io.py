"""Atomic files: safetensors tensors + JSON metadata, text, pipeline directories; state packing.

Every write goes to a temporary name in the same directory, is fsynced and renamed, so a
process killed at any moment leaves either the previous file or the new one, never a torn
file. Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import OnestepError

DIGEST_KEY = "tensor_digest"  # metadata key of every file atomic_save writes


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order: what a file's
    tensors were when written (``load_safetensors`` recomputes it)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``save_file`` to ``path`` via a temporary file and ``os.replace``; the tensors' digest is
    recorded in the metadata (``DIGEST_KEY``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), DIGEST_KEY: tensor_digest(tensors)}
    try:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # its I/O errors, as the OSError they are (the CLI's one line)
            raise _as_os_error(exc, path) from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill signal: leave no partial file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _as_os_error(exc: Exception, path: Path) -> OSError:
    """safetensors reports a failed write as ``SafetensorError`` (its text names the OS error)."""
    text = str(exc)
    code = errno.ENOSPC if ("No space left" in text or "os error 28" in text or "StorageFull" in text) else errno.EIO
    return OSError(code, os.strerror(code) if code == errno.ENOSPC else f"cannot write ({text[:120]})", str(path))


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # named by the file the user asked for, not our temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write) -> Path:
    """``write(tmp_path)`` to a temporary name beside ``path``, then rename it into place: a failed
    write (a full disk) leaves the previous file, or none, and no partial one; errors name ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")  # (writers that key on the suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_safetensors(path: Path, select=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (those whose names ``select`` accepts, default all) and metadata of a safetensors
    file; a clear error if missing or corrupt, or (a whole file read) if its tensors differ from
    the digest recorded when it was written."""
    path = Path(path)
    if not path.is_file():
        raise OnestepError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            if select is not None:
                tensors = {k: fh.get_tensor(k) for k in fh.keys() if select(k)}
        if select is None:
            tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise OnestepError(f"cannot read {path}: not a valid safetensors file ({exc})") from None
    if select is None and DIGEST_KEY in metadata and tensor_digest(tensors) != metadata[DIGEST_KEY]:
        raise OnestepError(f"{path} is damaged: its tensors differ from the digest recorded when it was written")
    return tensors, metadata


# ----------------------------------------------------------------------------- state packing


def unpack_module(prefix: str, tensors: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        missing, unexpected = module.load_state_dict(sub, strict=False)
    except RuntimeError:  # tensors of another shape
        raise OnestepError(f"checkpoint does not match the model for '{prefix}' (tensors of other shapes); "
                           f"was the network or config changed?") from None
    if missing or unexpected:
        raise OnestepError(
            f"checkpoint does not match the model for '{prefix}' "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); was the config changed?"
        )


def pack_optimizer(prefix: str, sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state dict (``optimizer.state_dict()`` layout) as tensors plus a JSON-able
    layout (param groups, scalar state)."""
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unpack_optimizer(prefix: str, tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    """The state dict ``pack_optimizer`` packed (``optimizer.load_state_dict`` takes it)."""
    state: dict[int, dict] = {}
    head = prefix + ".state."
    for key, value in tensors.items():
        if key.startswith(head):
            idx, name = key[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in layout["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": layout["param_groups"]}


def rng_tensors(prefix: str, generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out[f"{prefix}.torch_cuda"] = torch.cuda.get_rng_state()
    for name, gen in generators.items():
        out[f"{prefix}.{name}"] = gen.get_state()
    return out


def restore_rng(prefix: str, tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors[f"{prefix}.torch_cpu"])
    if torch.cuda.is_available() and f"{prefix}.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"{prefix}.torch_cuda"])
    for name, gen in generators.items():
        gen.set_state(tensors[f"{prefix}.{name}"])


def safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and raw metadata of a safetensors file, without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise OnestepError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys()), fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise OnestepError(f"cannot read {path}: not a valid safetensors file ({exc})") from None


def write_pipeline_dir(pipe, output, write_extra=None) -> Path:
    """Write a diffusers pipeline as a directory that loads without ``onestep``, atomically
    (``write_dir``). The caller checks ``output`` first (``core.paths.new_output_dir``).

    ``save_pretrained`` output (safetensors), the bundled ``pipeline.py`` and scheduler code
    (``portable.pipeline.write_remote_code``) named in ``model_index.json``; ``write_extra(tmp_dir)``
    adds files before the directory is renamed into place. Returns ``output``.
    """
    from ..portable.pipeline import write_remote_code  # (imports diffusers: only when writing one)

    def write(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_remote_code(tmp, type(pipe).__name__)
        if write_extra is not None:
            write_extra(tmp)

    return write_dir(output, write)


def write_dir(output, write) -> Path:
    """Write a directory whole: ``write(tmp)`` fills ``OUTPUT.partial``, checksums are added
    (``portable.integrity``, verified by every load), then it is renamed into place. A failed write
    (a full disk) removes its partial directory and leaves ``output`` as it was. An earlier output
    being replaced is moved to a unique hidden name first and removed only once the new one is in
    place; nothing else is deleted. Returns ``output``."""
    import uuid

    output = Path(output)
    tmp = output.with_name(output.name + ".partial")
    if tmp.is_dir():  # the leftover of an interrupted write (paths.new_output_dir checked it)
        shutil.rmtree(tmp)
    from ..portable.integrity import write_checksums

    try:
        tmp.mkdir(parents=True)
        write(tmp)
        write_checksums(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = output.with_name(f".{output.name}.replaced-{uuid.uuid4().hex[:12]}") if output.exists() else None
    if old is not None:  # an earlier output of the same kind (--overwrite): swapped out, then removed
        output.rename(old)
    tmp.rename(output)
    if old is not None:
        shutil.rmtree(old)
    _fsync_dir(output.parent)
    return output
