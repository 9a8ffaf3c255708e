"""The typed records that travel between the stages of a run, one definition each.

    rows ──prepare──▶ Request ──engine──▶ Completion ──finish──▶ ResultRow ──commit──▶ parts, BatchStats
                                                                              └──▶ ProgressEvent (listeners)
    a shard's run ──▶ Summary (summary-<shard>.json, the shard marker, the CLI's closing table)

Plain values only: vLLM's own types stay inside ``engine.py``, so a stage (and a test's fake engine)
never imports vLLM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class LoraAdapter:
    name: str
    path: str  # an absolute PEFT adapter folder


@dataclass(frozen=True)
class Request:
    """One row, rendered and ready for the engine, with what finishing it needs."""

    key: str  # unique in the run: run_id:batch:position
    batch: int
    position: int  # in its batch
    token_ids: list[int]
    sampling: dict[str, Any]  # SamplingParams keywords (plus json_schema), max_tokens settled by rendering
    lora: LoraAdapter | None = None
    adjustment: str | None = None  # what prompt.on_too_long changed, if anything

    @property
    def json_schema(self) -> dict | None:
        return self.sampling.get("json_schema")


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str | None
    output_tokens: int


@dataclass(frozen=True)
class Completion:
    """A finished request, as the engine reports it."""

    key: str
    samples: list[Sample]  # one per sampling.n
    prompt_tokens: int
    cached_prompt_tokens: int
    started_s: float | None = None  # perf_counter time the engine first scheduled it (None: not known)
    finished_s: float | None = None  # perf_counter time it was seen finished

    @property
    def text(self) -> str:
        return self.samples[0].text

    @property
    def finish_reason(self) -> str | None:
        return self.samples[0].finish_reason

    @property
    def output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.samples)


@dataclass
class ResultRow:
    """One row of results/part-*.parquet; its fields are output.RESULT_FIELDS, plus the kept columns."""

    id: str
    batch: int
    kept: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    output_tokens: int = 0
    error_code: str | None = None
    error: str | None = None
    adjustment: str | None = None
    json: str | None = None
    samples: list[dict[str, Any]] | None = None

    def as_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kept"}
        return {"id": self.id, **self.kept, **row}


RESULT_NAMES = frozenset(f.name for f in fields(ResultRow) if f.name != "kept")  # a kept column may not take one


@dataclass(frozen=True)
class ProgressEvent:
    """What a listener hears: the run started (``start``) or a batch was committed (``batch``)."""

    kind: str
    shard: str
    rows_total: int
    rows_done: int = 0
    batch: int | None = None
    requests: int = 0
    errors: int = 0
    output_tokens: int = 0
    output_tok_s: float = 0.0  # the run's pace so far, never one batch's
    cache_hit_rate: float = 0.0
    span_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}


@dataclass
class Summary:
    """A shard's run: ``summary-<shard>.json`` (``summary.json`` unsharded) and its completion marker."""

    job: str
    model: str
    model_path: str
    shard: str
    status: str
    exit_status: int
    complete: bool
    interrupted_by: str | None
    started_at: str
    finished_at: str
    duration_s: float
    input_rows: int
    shard_rows: int
    skipped_done: int
    output: dict[str, Any]  # the shard's committed totals (checkpoint.shard_totals)
    this_run: dict[str, Any]  # this run's totals and throughput (stats.RunTotals.as_dict)
    engine: dict[str, Any]
    vllm: str
    host: str
    run_id: str
    gpu_memory_peak_gb: float | None = None
    cost: dict[str, Any] | None = None  # GPU-hours and money of this run (cost.Cost)
    input_changed: list[str] | None = None  # input files that changed during the run (then not complete)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Summary":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class EngineCounters:
    """The engine's own counters at one moment (vLLM's Prometheus metrics); totals since start."""

    generation_tokens: float
    prompt_tokens: float
    prefix_cache_queries: float
    prefix_cache_hits: float
    requests_running: float
    requests_waiting: float
    kv_cache_usage: float | None
