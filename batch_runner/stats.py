"""Per-batch throughput statistics, counted from what vLLM returns, timed with perf_counter."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass
class BatchStats:
    shard: str
    run_id: str
    batch: int
    started_at: datetime
    finished_at: datetime
    wall_s: float
    requests: int
    errors: int
    prompt_tokens: int
    cached_prompt_tokens: int
    output_tokens: int
    finish_stop: int
    finish_length: int
    finish_abort: int
    finish_error: int
    gpu_memory_used_gb: float | None = None
    gpu_memory_peak_gb: float | None = None
    gpu_utilization: float | None = None

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def total_tok_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "output_tok_s": self.output_tok_s, "total_tok_s": self.total_tok_s,
                "requests_s": self.requests_s, "cache_hit_rate": self.cache_hit_rate}


def batch_stats(shard: str, run_id: str, batch: int, since: float, results: list[dict[str, Any]],
                gpu: dict[str, float | None]) -> BatchStats:
    """Stats of one committed batch. ``since`` is the perf_counter time of the previous commit,
    so that the wall times of a run's batches add up to its generation time."""
    now = time.perf_counter()
    wall = now - since
    finished = datetime.now(timezone.utc)
    reasons = Counter(r["finish_reason"] for r in results)
    return BatchStats(
        shard=shard, run_id=run_id, batch=batch,
        started_at=datetime.fromtimestamp(finished.timestamp() - wall, timezone.utc), finished_at=finished,
        wall_s=wall, requests=len(results), errors=sum(r["error_code"] is not None for r in results),
        prompt_tokens=sum(r["prompt_tokens"] or 0 for r in results),
        cached_prompt_tokens=sum(r["cached_prompt_tokens"] or 0 for r in results),
        output_tokens=sum(r["output_tokens"] or 0 for r in results),
        finish_stop=reasons["stop"], finish_length=reasons["length"], finish_abort=reasons["abort"],
        finish_error=reasons["error"], **gpu)


@dataclass
class RunTotals:
    """Totals over the batches of one run, for the summary and the progress line."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    wall_s: float = 0.0
    error_codes: Counter = field(default_factory=Counter)

    def add(self, stats: BatchStats, results: list[dict[str, Any]]) -> None:
        self.requests += stats.requests
        self.errors += stats.errors
        self.prompt_tokens += stats.prompt_tokens
        self.cached_prompt_tokens += stats.cached_prompt_tokens
        self.output_tokens += stats.output_tokens
        self.wall_s += stats.wall_s
        self.error_codes.update(r["error_code"] for r in results if r["error_code"])

    def as_dict(self) -> dict[str, Any]:
        w = self.wall_s or float("nan")
        return {
            "requests": self.requests, "errors": self.errors, "errors_by_code": dict(self.error_codes),
            "prompt_tokens": self.prompt_tokens, "cached_prompt_tokens": self.cached_prompt_tokens,
            "output_tokens": self.output_tokens, "generation_s": round(self.wall_s, 3),
            "output_tok_s": round(self.output_tokens / w, 1) if self.wall_s else 0.0,
            "total_tok_s": round((self.prompt_tokens + self.output_tokens) / w, 1) if self.wall_s else 0.0,
            "requests_s": round(self.requests / w, 2) if self.wall_s else 0.0,
            "cache_hit_rate": round(self.cached_prompt_tokens / self.prompt_tokens, 4) if self.prompt_tokens else 0.0,
        }
