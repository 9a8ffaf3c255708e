"""The engine timeline: one row per interval of a run's generation time, beside the per-batch stats.

Intervals do not overlap and together tile the run's generation time (first request submitted to
last finished), so their tokens and seconds add up and their rates are the engine's pace at that
moment. Tokens, queue and KV-cache figures come from the engine's own counters where the installed
vLLM keeps them (``LLM.get_metrics``; ``source`` = ``vllm``); otherwise tokens are counted from the
requests that finished in the interval (``source`` = ``batch-run``), coarser when rows finish in waves.
Rows are written as they are made, in parts of at most ``CHUNK_ROWS``, so a crash keeps them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..records import EngineCounters, TimelineRow
from .stats import Clock, rate

CHUNK_ROWS = 720  # an hour of 5 s intervals per part file


@dataclass
class _Ours:
    """What batch-run itself counts, from finished requests and commits."""

    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    requests_finished: int = 0
    rows_committed: int = 0


class Timeline:
    def __init__(self, shard: str, run_id: str, clock: Clock, interval_s: float,
                 counters: Callable[[], EngineCounters | None], gpu: Callable[[], dict],
                 write: Callable[[int, list[TimelineRow]], None]):
        self.shard, self.run_id, self.clock, self.interval_s = shard, run_id, clock, interval_s
        self._counters, self._gpu, self._write = counters, gpu, write
        self.rows: list[TimelineRow] = []
        self._tokens, self._seconds = 0, 0.0  # output tokens and seconds of the rows so far
        self.begun: float | None = None  # perf_counter time of the first submit
        self._mark: float = 0.0
        self._at_mark: EngineCounters | None = None
        self._ours = _Ours()

    def begin(self, now: float) -> None:
        if self.begun is None:
            self.begun = self._mark = now
            self._at_mark = self._counters()

    def finished(self, output_tokens: int, prompt_tokens: int, cached_prompt_tokens: int) -> None:
        o = self._ours
        o.output_tokens += output_tokens
        o.prompt_tokens += prompt_tokens
        o.cached_prompt_tokens += cached_prompt_tokens
        o.requests_finished += 1

    def committed(self, rows: int) -> None:
        self._ours.rows_committed += rows

    def due(self, now: float) -> bool:
        return self.begun is not None and now - self._mark >= self.interval_s

    def pace(self) -> float:
        """Output tokens per second over the intervals closed so far."""
        return rate(self._tokens, self._seconds)

    def tick(self, now: float, in_engine: int) -> TimelineRow | None:
        """Close the open interval at ``now``, write it, start the next; returns its row."""
        if self.begun is None or now <= self._mark:
            return None
        counters = self._counters()
        row = self._row(now, counters, in_engine)
        self.rows.append(row)
        self._tokens += row.output_tokens
        self._seconds += row.interval_s
        self._mark, self._at_mark, self._ours = now, counters, _Ours()
        chunk = (len(self.rows) - 1) // CHUNK_ROWS
        self._write(chunk, self.rows[chunk * CHUNK_ROWS:])
        return row

    def _row(self, now: float, c: EngineCounters | None, in_engine: int) -> TimelineRow:
        o, before = self._ours, self._at_mark
        engine = c is not None and before is not None

        def delta(name: str) -> int:  # counters only grow; a restarted engine's start over
            return int(max(0.0, getattr(c, name) - getattr(before, name)))

        out = delta("generation_tokens") if engine else o.output_tokens
        prompt = delta("prompt_tokens") if engine else o.prompt_tokens
        cached = delta("prefix_cache_hits") if engine else o.cached_prompt_tokens
        seconds = now - self._mark
        gpu = self._gpu()
        return TimelineRow(
            shard=self.shard, run_id=self.run_id, started_at=self.clock.stamp(self._mark),
            finished_at=self.clock.stamp(now), interval_s=seconds, output_tokens=out, prompt_tokens=prompt,
            cached_prompt_tokens=cached, output_tok_s=rate(out, seconds), total_tok_s=rate(out + prompt, seconds),
            requests_finished=o.requests_finished, rows_committed=o.rows_committed, requests_in_engine=in_engine,
            requests_running=int(c.requests_running) if c else None,
            requests_waiting=int(c.requests_waiting) if c else None,
            kv_cache_usage=c.kv_cache_usage if c else None,
            gpu_memory_used_gb=gpu["gpu_memory_used_gb"], gpu_utilization=gpu["gpu_utilization"],
            source="vllm" if engine else "batch-run")
