"""Atomic writes: a file appears whole under its name or not at all, with the umask's permissions.

Every file is written under a temporary name starting with '.', fsynced, then renamed: readers
(pyarrow.dataset ignores dot-files) never see a file cut short by a crash.

A folder that is the local copy of an object-store output (storage.py) is registered with
``publishing``: each file written or removed in it is then uploaded (whole) or deleted there at
once, before the write returns, so that the store holds what the local copy holds, in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq


class Publisher(Protocol):
    def written(self, path: Path) -> None: ...
    def removed(self, path: Path) -> None: ...


_PUBLISHERS: dict[Path, Publisher] = {}  # local copies of object-store outputs (storage.py)


@contextlib.contextmanager
def publishing(root: Path, publisher: Publisher) -> Iterator[None]:
    """While open, every atomic write and ``remove`` under ``root`` is passed on to ``publisher``."""
    _PUBLISHERS[root.resolve()] = publisher
    try:
        yield
    finally:
        _PUBLISHERS.pop(root.resolve(), None)


def _publisher(path: Path) -> Publisher | None:
    if not _PUBLISHERS:
        return None
    where = path.resolve()
    return next((p for root, p in _PUBLISHERS.items() if root in where.parents), None)


def remove(path: Path) -> None:
    """Remove a file batch-runner wrote (and its object, where the folder is a store's local copy)."""
    path.unlink(missing_ok=True)
    if (publisher := _publisher(path)) is not None:
        publisher.removed(path)


def umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new file under the process's umask (mkstemp alone gives 0600, which a
    team sharing an output folder cannot read)."""
    return 0o666 & ~umask()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, and rename into place; the file appears whole or not at all.

    On failure the temporary file is removed, and an OSError names ``path`` (not the temporary name,
    and not nothing, as pyarrow's do), so that the caller's message says which file failed.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, file_mode())
        finally:
            os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):  # else the next run's sweep_temporaries removes it
                Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(path)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    if (publisher := _publisher(path)) is not None:
        publisher.written(path)


def write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
    atomic_write(path, write)


def write_parquet(path: Path, table: pa.Table, metadata: dict[str, str], compression: str) -> None:
    meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
    table = table.replace_schema_metadata(meta)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression))
