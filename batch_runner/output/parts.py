"""Part files: their names, and which of them are complete."""

from __future__ import annotations

from pathlib import Path


def part_name(shard: str, run_id: str, batch: int) -> str:
    return f"part-{shard}-{run_id}-b{batch:06d}.parquet"


def flush_part_name(shard: str, run_id: str, flush: int) -> str:
    """A part of rows from batches still open, committed because they had waited output.flush_s."""
    return f"part-{shard}-{run_id}-f{flush:06d}.parquet"


def timeline_part_name(shard: str, run_id: str, chunk: int) -> str:
    return f"part-{shard}-{run_id}-t{chunk:04d}.parquet"


def committed_parts(folder: Path) -> list[Path]:
    """The complete part files; temporary files (dot-names) are never data."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet") if not p.name.startswith("."))


def sweep_temporaries(out: Path, shard: str) -> int:
    """Remove temporary files left by a crashed writer of this shard; returns how many.

    Only this shard's: other shards may be writing into the same folders right now.
    """
    n = 0
    for folder in (out, out / "results", out / "stats", out / "timeline"):
        for tmp in folder.glob(f".*{shard}*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)
            n += 1
    return n
