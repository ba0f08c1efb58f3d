"""Checkpoint directories every illume model uses: `config.json` + `model.safetensors`, never pickles.

Every file is written to a temporary name in the same directory, flushed to disk and renamed over
the old one (`os.replace` is atomic on POSIX and Windows), so a crash mid-save leaves the previous
checkpoint loadable and never a half-written file. Weights are written before the config: a crash
between the two renames leaves new weights beside the old config of the same model class.

torch is imported only when torch tensors are saved or loaded, so this module works without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp_path)`, then renames the finished file to `path`; the old file survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling folder; when the block ends, it replaces `path` in two renames.

    A crash inside the block leaves `path` as it was (the temporary folder is removed or, after a
    kill, left as a dot-folder beside it); readers never see a half-written directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
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
