"""Looking at a (sharded) output directory: which shards are done, and merging them into one.

Until it is merged, the directory already reads as one Parquet dataset (``<output>/results``);
``merge`` checks that every shard is complete and every id appears once, then writes one
compacted results file and one stats table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .checkpoint import output_locked, shard_totals
from .errors import JobError
from .openai_batch import write_openai_files
from .ownership import refuse_foreign
from .output import atomic_write, committed_parts
from .sharding import Shard


@dataclass
class ShardState:
    shard: Shard
    state: str  # complete | running (a run holds its lock) | partial | missing
    rows: int
    errors: int
    expected: int | None


def recorded(out: Path) -> dict:
    """The output's job.json: fingerprint and effective job."""
    path = out / "job.json"
    if not path.exists():
        raise JobError(f"{out}: not a batch-run output (no job.json)")
    return json.loads(path.read_text())


def shard_states(out: Path) -> list[ShardState]:
    """Each shard's state; refuses (exit 2, naming them) an output holding files it did not write."""
    refuse_foreign(out, recorded(out))
    states = []
    count = int(recorded(out)["fingerprint"]["shards"])
    for i in range(count):
        shard = Shard(i, count)
        totals = shard_totals(out / "results", shard.label)
        rows, errors = totals["rows"], totals["errors"]
        marker = out / "shards" / f"{shard.label}.done"
        expected = json.loads(marker.read_text())["shard_rows"] if marker.exists() else None
        state = "complete" if marker.exists() else "running" if output_locked(out, shard.label) \
            else "partial" if rows else "missing"
        states.append(ShardState(shard, state, rows, errors, expected))
    return states


def _data_parallel(job_record: dict) -> int:
    dp = job_record.get("job", {}).get("engine", {}).get("data_parallel", 1)
    return dp if isinstance(dp, int) and dp > 0 else 1


def array_size(out: Path) -> int | None:
    """The array size of an output's Slurm tasks, fixed by its first run; None for a new output."""
    path = out / "job.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return int(record["fingerprint"]["shards"]) // _data_parallel(record)


def array_tasks(out: Path, states: list[ShardState]) -> list[int]:
    """The Slurm array indices to resubmit: those with an unfinished shard and none running (with
    data_parallel D, task I runs shards I*D .. I*D+D-1)."""
    dp = _data_parallel(recorded(out))
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
        says.append(f"resubmit (sbatch --array={array_ranges(tasks)} ..., or rerun the job)")
    return "; ".join(says) + "; then merge"


def merge(out: Path, compression: str = "zstd") -> tuple[Path, int]:
    """Write ``merged/results.parquet`` and ``merged/stats.parquet``; refuse unless complete."""
    states = shard_states(out)
    if any(s.state != "complete" for s in states):
        raise JobError(unfinished_message(out, states))
    results = ds.dataset([str(p) for p in committed_parts(out / "results")], format="parquet")
    ids = results.to_table(columns=["id"]).column("id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise JobError(f"{out}: some ids appear more than once; the output is inconsistent")
    target = out / "merged" / "results.parquet"

    def write_results(tmp: str) -> None:
        with pq.ParquetWriter(tmp, results.schema, compression=compression) as w:
            for batch in results.to_batches():  # streams: never the whole table in memory
                w.write_batch(batch)

    atomic_write(target, write_results)
    stats = ds.dataset([str(p) for p in committed_parts(out / "stats")], format="parquet").to_table()
    atomic_write(out / "merged" / "stats.parquet", lambda tmp: pq.write_table(stats, tmp, compression=compression))
    job = recorded(out).get("job", {})
    if job.get("output", {}).get("openai"):
        write_openai_files(out, job.get("model", {}).get("name", ""))
    return target, len(ids)
