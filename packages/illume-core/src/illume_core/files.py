"""Reading files that users and data sets name: contained paths and bounded reads.

Paths inside a data file (a manifest's image, a corpus item) are data, not trusted input: one
`../../../etc/passwd` must not make a loader read, or send, a file outside the data set.
`resolve_inside` is the one place that turns such a path into a file path. Reads are bounded and
of regular files only: a FIFO would block a loader forever and `/dev/zero` would fill memory, and
both pass a size check that trusts `st_size`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path


class UnsafePathError(ValueError):
    """A path from a data file points outside its data set, or is absolute where that is not allowed."""


def resolve_inside(
    root: str | os.PathLike, path: str | os.PathLike, *, allow_absolute: bool = False
) -> Path:
    """`path` (as a data file names it) resolved against `root`, symlinks followed, which must stay
    inside `root`. An absolute `path` is refused unless `allow_absolute` (a user's own config
    asking for it), and is then taken as it is."""
    given = Path(path)
    if given.is_absolute():
        if not allow_absolute:
            raise UnsafePathError(
                f"{os.fspath(path)!r} is an absolute path; paths in a data file are relative to "
                f"its folder {os.fspath(root)!r} (allow absolute paths in the data config to accept it)"
            )
        return given
    base = Path(root).resolve()
    resolved = (base / given).resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePathError(
            f"{os.fspath(path)!r} points outside its data set {os.fspath(base)!r} "
            f"(to {os.fspath(resolved)!r}); keep data files' paths inside their folder"
        )
    return resolved


def read_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most `max_bytes` (OSError otherwise, with a message naming
    the file and the limit). The file is opened without blocking and checked on the open handle,
    so a FIFO, a device or a file swapped in after a check is refused, never read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(
                f"{os.fspath(path)!r} is not a regular file (a FIFO, a device or a socket)"
            )
        if info.st_size > max_bytes:
            raise OSError(
                f"{os.fspath(path)!r} is {info.st_size} bytes, over the limit of {max_bytes}"
            )
        chunks, total = [], 0
        while True:  # the file may grow after the check: read no more than the limit and one byte
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise OSError(f"{os.fspath(path)!r} grew past the limit of {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


#: The largest configuration file read (config.json, generation_config.json, manifests, recipes, chains).
MAX_CONFIG_BYTES = 64 << 20
#: The largest data file read whole (conversation files, JSON-lines manifests, logs).
MAX_DATA_BYTES = 4 << 30


def read_text(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """A regular file's UTF-8 text, read within `max_bytes` (`read_bounded`: a FIFO, a device or
    a file over the limit is an OSError naming it, never read)."""
    return read_bounded(path, max_bytes).decode("utf-8")


def read_json(path: str | os.PathLike, max_bytes: int = MAX_CONFIG_BYTES):
    """A JSON file's value, read within `max_bytes`; bad JSON is a ValueError naming the file,
    the line and the column."""
    try:
        return json.loads(read_text(path, max_bytes))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{os.fspath(path)}: not valid JSON ({err.msg}, line {err.lineno}, column {err.colno})"
        ) from None


def read_jsonl(path: str | os.PathLike, max_bytes: int = MAX_DATA_BYTES) -> list[dict]:
    """The rows of a JSON-lines file (blank lines skipped), read within `max_bytes`
    (`read_bounded`); a bad line is a ValueError naming the file and the line."""
    rows = []
    for number, line in enumerate(read_text(path, max_bytes).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{os.fspath(path)}, line {number}: not valid JSON ({err.msg})"
            ) from None
    return rows
