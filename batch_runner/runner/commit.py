"""Stage 4: committing. A batch's finished rows become one atomic Parquet part with its stats row;
the engine timeline is written beside them; listeners (progress, metrics, a parent process) hear
of each commit as a ``ProgressEvent``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..atomic import write_parquet
from ..engines.gpu import GpuMonitor
from ..errors import RESUME_ADVICE, writing
from ..observe.stats import BatchTimes, Clock, RunTotals, batch_stats
from ..observe.timeline import Timeline
from ..output.ownership import META_KEY
from ..output.parts import flush_part_name, part_name, timeline_part_name
from ..output.schemas import STATS_SCHEMA, TIMELINE_SCHEMA, results_schema, storable_rows
from ..records import EngineCounters, ProgressEvent, ResultRow, TimelineRow

Listener = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PartWriter:
    """Where and how this run's files are written."""

    out: Path
    shard: str
    run_id: str
    meta: dict[str, str]  # Parquet key-value metadata: job, model, run, engine, host
    compression: str

    def write(self, folder: str, name: str, table: pa.Table) -> None:
        path = self.out / folder / name
        with writing(path, RESUME_ADVICE):  # a StorageError, not an OSError the pipeline would blame on the engine
            write_parquet(path, table, named(self.meta, name), self.compression)


def named(meta: dict[str, str], name: str) -> dict[str, str]:
    """The footer's metadata with the part's final name in batch-run's entry: a copy of the part
    under another name (or the part renamed) is then told from it (ownership.py)."""
    if META_KEY.decode() not in meta:
        return meta
    return {**meta, META_KEY.decode(): json.dumps({**json.loads(meta[META_KEY.decode()]), "name": name})}


class Committer:
    def __init__(self, writer: PartWriter, kept: pa.Schema, rows_total: int,
                 counters: Callable[[], EngineCounters | None], timeline_interval_s: float, reasoning: bool = False,
                 logprobs: bool = False):
        self.writer = writer
        self.schema, self.kept_names = results_schema(kept, reasoning, logprobs), kept.names
        self.gpu_monitor = GpuMonitor()  # the timeline's GPU columns and the summary's peak
        self.clock, self.gpu = Clock(), self.gpu_monitor.sample
        self.totals = RunTotals()
        self.rows_total, self.rows_done = rows_total, 0
        self.timeline = Timeline(writer.shard, writer.run_id, self.clock, timeline_interval_s, counters, self.gpu,
                                 self._write_timeline)
        self.listeners: list[Listener] = []
        self.flushes = 0

    def _write_timeline(self, chunk: int, rows: list[TimelineRow]) -> None:
        w = self.writer
        self.writer.write("timeline", timeline_part_name(w.shard, w.run_id, chunk),
                          pa.Table.from_pylist([r.as_row() for r in rows], schema=TIMELINE_SCHEMA))

    def pace(self) -> float:
        """This run's output tokens per second of generation: over the whole run once it has ended,
        else over the timeline's intervals so far (the engine's tokens, committed or not)."""
        return self.totals.output_tok_s if self.totals.generation_s else self.timeline.pace()

    def started(self) -> None:
        self._tell(ProgressEvent("start", self.writer.shard, self.rows_total))

    def write_rows(self, results: list[ResultRow], name: str) -> list[dict]:
        """One atomic part of result rows; returns them as stored (for the batch's stats row)."""
        rows = storable_rows([r.as_row() for r in results], self.schema, self.kept_names)
        self.writer.write("results", name, pa.Table.from_pylist(rows, schema=self.schema))
        self.timeline.committed(len(rows))
        return rows

    def flush(self, results: list[ResultRow]) -> list[dict]:
        """Rows of open batches that have waited long enough: a part of their own."""
        self.flushes += 1
        return self.write_rows(results, flush_part_name(self.writer.shard, self.writer.run_id, self.flushes))

    def commit(self, number: int, results: list[ResultRow], times: BatchTimes, stored: list[dict] = ()) -> None:
        """A batch is done: its rows not yet written become its part, then its stats row over all its
        rows (``stored``: those flushed before). A part without its stats row is still a result: the
        stats are about the run, the parts are the output."""
        w = self.writer
        rows = [*stored, *(self.write_rows(results, part_name(w.shard, w.run_id, number)) if results else [])]
        if not rows:
            return
        stats = batch_stats(w.shard, w.run_id, number, times, self.clock, rows, self.gpu())
        w.write("stats", part_name(w.shard, w.run_id, number),
                pa.Table.from_pylist([stats.as_row()], schema=STATS_SCHEMA))
        self.totals.add(stats, rows)
        self.rows_done += stats.requests
        self._tell(ProgressEvent(
            "batch", w.shard, self.rows_total, self.rows_done, number, stats.requests, stats.errors,
            stats.output_tokens, round(self.pace(), 1), round(stats.cache_hit_rate, 3), round(stats.span_s, 2)))

    def end(self, now: float, in_engine: int) -> None:
        """Close the last interval: the run's generation time ends here (last finish, or the stop)."""
        if self.timeline.begun is not None:
            self.timeline.tick(now, in_engine)
            self.totals.generation_s = now - self.timeline.begun

    def _tell(self, event: ProgressEvent) -> None:
        for listener in self.listeners:
            listener(event)
