"""Looking at a (sharded) output directory: which shards are done, and merging them into one.

Until it is merged, the directory already reads as one Parquet dataset (``<output>/results``);
``merge`` checks that every shard is complete and every id appears once, then writes one
compacted results file and one stats table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..atomic import atomic_write
from ..config import IndexedKind
from ..errors import JobError, ResumeConflict
from ..inputs.assignment import Shard
from ..storage import is_url, join, read_text
from .job_record import JOB_FILE, JobRecord
from .openai import write_openai_files
from .ownership import refuse_foreign
from .parts import committed_parts
from .resume import OutputLock, output_locked, shard_totals

# Merged files' row groups: readers (duckdb, Spark, pyarrow) do best with 100k to 1M rows a group;
# the byte bound keeps the one group held in memory small when rows are long.
ROW_GROUP_ROWS = 100_000
ROW_GROUP_BYTES = 64 * 2**20
MERGE_TEMPORARIES = (".results.parquet.*.tmp", ".stats.parquet.*.tmp")  # atomic_write's names in merged/


@dataclass
class ShardState:
    shard: Shard
    state: str  # complete | running (a run holds its lock) | partial | missing
    rows: int
    errors: int
    expected: int | None


def shard_states(out: Path) -> list[ShardState]:
    """Each shard's state; refuses (exit 2, naming them) an output holding files it did not write."""
    record = JobRecord.require(out)
    refuse_foreign(out, record.as_dict())
    states = []
    for i in range(record.shards):
        shard = Shard(i, record.shards)
        totals = shard_totals(out / "results", shard.label)
        rows, errors = totals.rows, totals.errors
        marker = out / "shards" / f"{shard.label}.done"
        # a marker of any batch-run version: its shard_rows is all that is read (Summary.load would
        # refuse one that predates a summary key)
        expected = json.loads(marker.read_text())["shard_rows"] if marker.exists() else None
        # the marker is trusted only while the parts still hold its rows (a part deleted or cut by hand)
        complete = marker.exists() and rows == expected
        state = "complete" if complete else "running" if output_locked(out, shard.label) \
            else "partial" if rows else "missing"
        states.append(ShardState(shard, state, rows, errors, expected))
    return states



def array_size(out: Path | str) -> int | None:
    """The array size of an output's array tasks (Slurm's, or a cloud scheduler's), fixed by its first
    run; None for a new output. ``out``: a folder, or an ``s3://`` output's URL (its job.json read
    from the bucket)."""
    if is_url(str(out)):
        text = read_text(str(out), JOB_FILE)
        record = None if text is None else JobRecord.parse(text, Path(join(str(out), JOB_FILE)))
    else:
        record = JobRecord.load(Path(out))
    if record is None:
        return None
    return record.shards // record.data_parallel


def array_tasks(out: Path, states: list[ShardState]) -> list[int]:
    """The Slurm array indices to resubmit: those with an unfinished shard and none running (with
    data_parallel D, task I runs shards I*D .. I*D+D-1)."""
    dp = JobRecord.require(out).data_parallel
    running = {s.shard.index // dp for s in states if s.state == "running"}
    return sorted({s.shard.index // dp for s in states if s.state != "complete"} - running)


def array_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (Slurm's --array syntax)."""
    out, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            out.append(f"{start}-{n}" if n != start else f"{n}")
            start = None
    return ",".join(out)


def unfinished_message(out: Path, states: list[ShardState]) -> str:
    """Why ``merge`` refuses: the shards not complete, those running now (wait for them), and the
    array indices to resubmit when there are any (never an empty ``--array=``)."""
    unfinished = [s.shard.index for s in states if s.state != "complete"]
    running = [s.shard.index for s in states if s.state == "running"]
    says = [f"{out}: shards not complete: {array_ranges(unfinished)}"]
    if running:
        says.append(f"running now: {array_ranges(running)} (wait for them to finish)")
    if tasks := array_tasks(out, states):
        if JobRecord.require(out).executor_kind in get_args(IndexedKind):  # a cloud scheduler's array
            says.append(f"run array indices {array_ranges(tasks)} again (`batch-run status {out}` says how)")
        else:
            says.append(f"resubmit (sbatch --array={array_ranges(tasks)} ..., or rerun the job)")
    return "; ".join(says) + "; then merge"


def duplicates_message(out: Path, results: ds.Dataset, first: int = 5) -> str:
    """Which ids appear more than once, and the parts holding them (a first few of each)."""
    where: dict[str, list[str]] = {}
    for fragment in results.get_fragments():
        for i in set(fragment.to_table(columns=["id"]).column("id").to_pylist()):
            where.setdefault(i, []).append(fragment.path)
    repeated = sorted((i, files) for i, files in where.items() if len(files) > 1)
    lines = [f"id {i!r} in {', '.join(files)}" for i, files in repeated[:first]]
    if len(repeated) > first:
        lines.append(f"... and {len(repeated) - first} more ids")
    if not repeated:  # repeated inside one part
        lines.append("(each inside a single part)")
    return (f"{out}: some ids appear more than once; the output is inconsistent:\n  " + "\n  ".join(lines)
            + "\nMove the part that should not be there out of the folder (or rerun with --fresh), then merge.")


def merge(out: Path, compression: str = "zstd") -> tuple[Path, int]:
    """Write ``merged/results.parquet`` and ``merged/stats.parquet``; refuse unless complete."""
    states = shard_states(out)
    if any(s.state != "complete" for s in states):
        raise JobError(unfinished_message(out, states))
    results = ds.dataset([str(p) for p in committed_parts(out / "results")], format="parquet")
    ids = results.to_table(columns=["id"]).column("id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise JobError(duplicates_message(out, results))
    target = out / "merged" / "results.parquet"
    with merge_lock(out):
        write_compacted(results, target, compression)
        stats = ds.dataset([str(p) for p in committed_parts(out / "stats")], format="parquet")
        write_compacted(stats, out / "merged" / "stats.parquet", compression)
        job = JobRecord.require(out).spec
        if job is not None and job.output.openai:
            write_openai_files(out, job.model.name)
    return target, len(ids)


@contextmanager
def merge_lock(out: Path) -> Iterator[None]:
    """One merge of an output at a time (``merged/.lock-merge``, non-blocking); under it, the
    temporary files of earlier merges cut short (kill -9, power loss) are removed."""
    lock = OutputLock(out / "merged", "merge")
    try:
        lock.acquire()
    except ResumeConflict:
        raise ResumeConflict(f"{out}: another merge of this output is running; wait for it to finish") from None
    try:
        for pattern in MERGE_TEMPORARIES:
            for tmp in (out / "merged").glob(pattern):
                tmp.unlink(missing_ok=True)
        yield
    finally:
        lock.release()


def compacted(dataset: ds.Dataset) -> Iterator[pa.Table]:
    """The dataset's rows, streamed, in tables of one row group each: ROW_GROUP_ROWS rows or
    ROW_GROUP_BYTES, whichever comes first (parts hold one batch each, often a few rows)."""
    tables, rows, size = [], 0, 0
    for batch in dataset.to_batches():
        tables.append(batch)
        rows, size = rows + batch.num_rows, size + batch.nbytes
        if rows >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
            yield pa.Table.from_batches(tables, dataset.schema)
            tables, rows, size = [], 0, 0
    if tables:
        yield pa.Table.from_batches(tables, dataset.schema)


def write_compacted(dataset: ds.Dataset, target: Path, compression: str) -> None:
    """One Parquet file of the dataset's rows in row groups of a sensible size, written atomically;
    memory holds one row group, however large the dataset."""
    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, dataset.schema, compression=compression) as w:
            for table in compacted(dataset):
                w.write_table(table, row_group_size=table.num_rows)

    atomic_write(target, write)
