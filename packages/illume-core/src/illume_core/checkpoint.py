"""Checkpoint directories every illume model uses: `config.json` + `model.safetensors`, never pickles.

Every file is written to a temporary name in the same directory, flushed to disk and renamed over
the old one (`os.replace` is atomic on POSIX and Windows), so a crash mid-save leaves the previous
checkpoint loadable and never a half-written file. Weights are written before the config: a crash
between the two renames leaves new weights beside the old config of the same model class.

torch is imported only when torch tensors are saved or loaded, so this module works without it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .files import read_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or in a format we refuse to load."""


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep_stale(path: str | os.PathLike) -> None:
    """Removes what crashed saves of `path` left beside it: `.NAME.tmp-PID-*` of writers no longer
    running, and `.NAME.old-*` (a previous version moved aside) once `path` itself is in place.
    Only names this module makes are touched."""
    path = Path(path)
    prefix = f".{path.name}."
    for sibling in path.parent.glob(f"{glob.escape(prefix)}*"):
        rest = sibling.name[len(prefix) :]
        if rest.startswith("tmp-"):
            pid = rest[4:].split("-", 1)[0]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
        elif not (rest.startswith("old-") and path.exists()):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp_path)`, then renames the finished file to `path`; the old file survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No sweep here: a data set writes thousands of files into one folder, and a listing per
    # file would be quadratic. Checkpoint folders are swept by save_checkpoint and
    # atomic_directory, whose folders are small.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


#: The file `atomic_directory` writes into every folder it makes: what wrote it and which kind of
#: folder it is. A folder is replaced only when it holds this file with the same kind.
OWNER_MARKER = ".illume-output.json"


class DirectoryNotOursError(FileExistsError):
    """An output folder exists and was not written by illume as that kind of folder."""


def directory_owner(path: str | os.PathLike) -> str | None:
    """The kind recorded in a folder's OWNER_MARKER, or None where there is none (or it is unreadable)."""
    try:
        data = read_json(Path(path) / OWNER_MARKER)
    except (OSError, ValueError):
        return None
    return (
        data.get("kind") if isinstance(data, dict) and data.get("written_by") == "illume" else None
    )


def check_replaceable(path: str | os.PathLike, kind: str) -> None:
    """Raises DirectoryNotOursError unless `path` is absent, an empty folder, or a folder illume
    wrote as `kind`: what `atomic_directory(path, kind)` may replace. Call it before long work, so
    that a wrong output folder is refused at once rather than after it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            return
        owner = directory_owner(path)
        if owner == kind:
            return
        what = (
            f"an illume {owner} folder" if owner else f"not written by illume (no {OWNER_MARKER})"
        )
        raise DirectoryNotOursError(
            f"{path} exists and is {what}; refusing to replace it with a {kind} folder. "
            "Choose a new or empty folder, or move that one away yourself."
        )
    raise DirectoryNotOursError(
        f"{path} exists and is not a folder; refusing to replace it. Choose another path."
    )


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, kind: str = "checkpoint") -> Iterator[Path]:
    """Yields a temporary sibling folder; when the block ends, it replaces `path` in two renames.

    `path` must be absent, empty, or a folder written here before as the same `kind` (its
    OWNER_MARKER says so): anything else raises DirectoryNotOursError before the block runs, so
    that a user's folder, or a model passed where an export goes, is never deleted. A crash inside
    the block leaves `path` as it was; what a killed save leaves beside it (a dot-folder) is
    removed by the next save of the same path. Readers never see a half-written directory.
    """
    path = Path(path)
    check_replaceable(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        (tmp / OWNER_MARKER).write_text(
            json.dumps({"written_by": "illume", "kind": kind}) + "\n", encoding="utf-8"
        )
        yield tmp
        check_replaceable(path, kind)  # the block may have taken long; look again
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_with(tmp, path)


def replace_with(finished: str | os.PathLike, path: str | os.PathLike) -> None:
    """Puts the finished folder `finished` (a sibling of `path`) in `path`'s place in two renames:
    the old `path` (a folder or a file) is moved aside, `finished` renamed in, the old removed.
    A crash between the renames leaves the old one beside it (`.NAME.old-*`), which the next save
    of `path` sweeps away (`sweep_stale`)."""
    finished, path = Path(finished), Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    os.replace(finished, path)
    _fsync_dir(path.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def _save_safetensors(
    tmp: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None
) -> None:
    meta = dict(metadata or {})
    if tensors and all(_is_torch_tensor(v) for v in tensors.values()):
        from safetensors.torch import save_file

        seen: set[int] = set()
        prepared = {}
        for key, value in tensors.items():
            value = value.detach().contiguous()
            # safetensors refuses tensors that share storage (tied weights): store a copy.
            ptr = value.untyped_storage().data_ptr() if value.numel() else -1
            if ptr in seen:
                value = value.clone()
            seen.add(ptr)
            prepared[key] = value.cpu()
        save_file(prepared, str(tmp), metadata=meta)
    else:
        import numpy as np
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)


def save_checkpoint(
    directory: str | os.PathLike,
    config: Mapping[str, Any],
    tensors: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
    weights_name: str = WEIGHTS_NAME,
) -> Path:
    """Writes `config.json` and `model.safetensors` (torch tensors or numpy arrays) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (weights_name, CONFIG_NAME):
        sweep_stale(directory / name)
    atomic_write(directory / weights_name, lambda tmp: _save_safetensors(tmp, tensors, metadata))
    atomic_write_json(directory / CONFIG_NAME, dict(config))
    return directory


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Reads `config.json` of a checkpoint directory, with errors that say what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is not a directory; pass the folder a model was saved to"
        )
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME}; was it written by save_pretrained?"
        )
    try:
        config = read_json(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(config).__name__}")
    return config


def load_weights(
    directory: str | os.PathLike,
    *,
    framework: str = "torch",
    device: str = "cpu",
    weights_name: str = WEIGHTS_NAME,
) -> dict[str, Any]:
    """Loads `model.safetensors`; pickled weights (.bin, .pt, ...) are refused, never unpickled."""
    directory = Path(directory)
    path = directory / weights_name
    if not path.is_file():
        pickles = sorted(p.name for p in directory.glob("*") if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{directory} holds pickled weights ({', '.join(pickles)}) and no {weights_name}; "
                "pickles can run code when loaded, so they are refused. Convert them to safetensors "
                "in a trusted environment (safetensors.torch.save_file) and load again."
            )
        raise CheckpointError(f"{directory} has no {weights_name}")
    try:
        if framework == "torch":
            from safetensors.torch import load_file

            return load_file(str(path), device=device)
        if framework == "numpy":
            from safetensors.numpy import load_file as load_numpy

            return load_numpy(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a valid safetensors file ({err})") from None
    raise ValueError(f"framework must be 'torch' or 'numpy', got {framework!r}")


def load_checkpoint(
    directory: str | os.PathLike, *, framework: str = "torch", device: str = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, tensors) of a directory written by `save_checkpoint`."""
    return load_config(directory), load_weights(directory, framework=framework, device=device)
