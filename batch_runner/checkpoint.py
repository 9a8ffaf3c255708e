"""Resume: what is done, whether this output belongs to this job, and who is writing to it.

What is done is the set of ids in the committed result parts; nothing else is trusted. The
fingerprint records what determines the results, so that a resumed run cannot mix outputs of two
different jobs. A lock per shard keeps two runs from writing the same rows; the kernel releases it
when its process dies, so a crashed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import ResumeConflict
from .output import committed_parts, write_json


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    missing = "(absent)"
    return [f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}" for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]


def check_fingerprint(out: Path, fingerprint: dict[str, Any], job: dict[str, Any]) -> None:
    """Record the fingerprint in a new output; refuse an output written by a different job."""
    path = out / "job.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded.get("fingerprint_hash") == fingerprint_hash(fingerprint):
            return
        changes = changed_keys(recorded.get("fingerprint", {}), fingerprint)
        raise ResumeConflict(
            [f"{out} holds results of a different job; resuming would mix them. What changed:"]
            + [f"  {c}" for c in changes[:20]]
            + ["Rerun with --fresh to move the old results aside and start over, or write elsewhere with --output DIR."])
    write_json(path, {"fingerprint_hash": fingerprint_hash(fingerprint), "fingerprint": fingerprint, "job": job})


def move_aside(out: Path) -> Path | None:
    """--fresh: move the old results to a sibling folder; nothing is deleted behind the user's back.

    Lock files stay, so that the caller's lock (held while this runs) stays valid.
    """
    entries = [p for p in out.iterdir() if not p.name.startswith(".lock-")] if out.is_dir() else []
    if not entries:
        return None
    target = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    target.mkdir()
    for entry in entries:
        os.replace(entry, target / entry.name)
    return target


class OutputLock:
    """An exclusive, non-blocking lock on one shard of an output directory."""

    def __init__(self, out: Path, shard: str):
        self.path = out / f".lock-{shard}"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise ResumeConflict(f"{self.path.parent}: another run is writing to this output "
                                 f"({holder}); wait for it to finish, or use another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def output_locked(out: Path, shard: str) -> bool:
    """Whether a run holds this shard's lock right now (for status and report; takes no lock)."""
    try:
        fd = os.open(out / f".lock-{shard}", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def shard_parts(results: Path, shard: str) -> list[Path]:
    return [p for p in committed_parts(results) if p.name.startswith(f"part-{shard}-")]


def shard_totals(results: Path, shard: str) -> dict[str, Any]:
    """Committed rows and errors (by code) of one shard."""
    parts = shard_parts(results, shard)
    if not parts:
        return {"rows": 0, "errors": 0, "errors_by_code": {}}
    table = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["error_code"])
    by_code: dict[str, int] = {}
    for code in table.column("error_code").to_pylist():
        if code:
            by_code[code] = by_code.get(code, 0) + 1
    return {"rows": table.num_rows, "errors": sum(by_code.values()), "errors_by_code": by_code}


def done_ids(results: Path, shard: str) -> set[str]:
    """Ids of this shard whose result is committed."""
    parts = shard_parts(results, shard)
    if not parts:
        return set()
    table = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["id"])
    return set(table.column("id").to_pylist())


def drop_error_rows(results: Path, shard: str, compression: str) -> int:
    """--retry-errors: rewrite each part of this shard without its error rows, so those ids run again.

    Each part is replaced atomically; at every moment every id is in at most one committed part.
    """
    import pyarrow.compute as pc

    from .output import atomic_write

    dropped = 0
    for part in shard_parts(results, shard):
        table = pq.read_table(part)
        failed = pc.is_valid(table.column("error_code"))
        n = pc.sum(failed).as_py() or 0
        if not n:
            continue
        kept = table.filter(pc.invert(failed))
        if kept.num_rows == 0:
            part.unlink()
        else:
            atomic_write(part, lambda tmp, kept=kept: pq.write_table(kept, tmp, compression=compression))
        dropped += n
    return dropped


def clear_shard_marker(out: Path, shard: str) -> None:
    (out / "shards" / f"{shard}.done").unlink(missing_ok=True)


def mark_shard_done(out: Path, shard: str, summary: dict[str, Any]) -> None:
    write_json(out / "shards" / f"{shard}.done", summary)


__all__ = ["OutputLock", "check_fingerprint", "done_ids", "drop_error_rows", "move_aside",
           "fingerprint_hash", "mark_shard_done", "clear_shard_marker"]
