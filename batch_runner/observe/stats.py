"""Throughput statistics: one definition of a rate, per-batch spans, and the run's totals.

Batches overlap in the engine (a batch starts while earlier ones still run), so each batch's row
gives its own span, from the engine first scheduling one of its rows to its last finished row (or
from its submission, where the engine does not say), and its rates over that span:
``span_*`` columns are that batch's own pace, never to be added up across batches. The run's
throughput is the run's tokens over the run's generation time (first request submitted to last
finished); the engine timeline (``timeline.py``) tiles that same time with non-overlapping intervals.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..records import RunFigures, StatsRow


def rate(amount: float, seconds: float) -> float:
    """The one definition of a rate: an amount over the seconds it took (0 for no time)."""
    return amount / seconds if seconds > 0 else 0.0


class Clock:
    """perf_counter times of one run, and their wall-clock timestamps."""

    def __init__(self) -> None:
        self.perf0 = time.perf_counter()
        self.wall0 = time.time()

    def stamp(self, perf: float) -> datetime:
        return datetime.fromtimestamp(self.wall0 + (perf - self.perf0), timezone.utc)


BatchStats = StatsRow  # one committed batch's stats: the row of stats/part-*.parquet


@dataclass
class BatchTimes:
    """perf_counter times of one batch in the engine."""

    submitted: float
    started: float | None = None
    finished: float | None = None

    def saw(self, started: float | None, finished: float | None) -> None:
        if started is not None:
            self.started = started if self.started is None else min(self.started, started)
        if finished is not None:
            self.finished = finished if self.finished is None else max(self.finished, finished)


def batch_stats(shard: str, run_id: str, batch: int, times: BatchTimes, clock: Clock,
                results: list[dict[str, Any]], gpu: dict[str, float | None]) -> BatchStats:
    """Stats of one committed batch (a batch of only error rows has a span of zero)."""
    started = times.started if times.started is not None else times.submitted
    finished = times.finished if times.finished is not None else started
    reasons = Counter(r["finish_reason"] for r in results)
    span = max(0.0, finished - started)
    requests = len(results)
    prompt = sum(r["prompt_tokens"] or 0 for r in results)
    cached = sum(r["cached_prompt_tokens"] or 0 for r in results)
    output = sum(r["output_tokens"] or 0 for r in results)
    return StatsRow(
        shard=shard, run_id=run_id, batch=batch, submitted_at=clock.stamp(times.submitted),
        started_at=clock.stamp(started), finished_at=clock.stamp(finished), span_s=span,
        requests=requests, errors=sum(r["error_code"] is not None for r in results),
        prompt_tokens=prompt, cached_prompt_tokens=cached, output_tokens=output,
        span_output_tok_s=rate(output, span), span_total_tok_s=rate(prompt + output, span),
        span_requests_s=rate(requests, span), cache_hit_rate=rate(cached, prompt),
        finish_stop=reasons["stop"], finish_length=reasons["length"], finish_abort=reasons["abort"],
        finish_error=reasons["error"], **gpu)


@dataclass
class RunTotals:
    """Totals over the committed batches of one run, and its generation time."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    generation_s: float = 0.0  # first request submitted to last finished (or now, while running)
    error_codes: Counter = field(default_factory=Counter)
    engine_restarts: int = 0  # set by the pipeline's recovery

    def add(self, stats: BatchStats, results: list[dict[str, Any]]) -> None:
        self.requests += stats.requests
        self.errors += stats.errors
        self.prompt_tokens += stats.prompt_tokens
        self.cached_prompt_tokens += stats.cached_prompt_tokens
        self.output_tokens += stats.output_tokens
        self.error_codes.update(r["error_code"] for r in results if r["error_code"])

    @property
    def output_tok_s(self) -> float:
        return rate(self.output_tokens, self.generation_s)

    def figures(self) -> RunFigures:
        """The summary's ``this_run``: the totals, and the rates over the generation time, rounded."""
        g = self.generation_s
        return RunFigures(
            requests=self.requests, errors=self.errors, errors_by_code=dict(self.error_codes),
            prompt_tokens=self.prompt_tokens, cached_prompt_tokens=self.cached_prompt_tokens,
            output_tokens=self.output_tokens, generation_s=round(g, 3), output_tok_s=round(self.output_tok_s, 1),
            total_tok_s=round(rate(self.prompt_tokens + self.output_tokens, g), 1),
            requests_s=round(rate(self.requests, g), 2),
            cache_hit_rate=round(rate(self.cached_prompt_tokens, self.prompt_tokens), 4),
            engine_restarts=self.engine_restarts)
