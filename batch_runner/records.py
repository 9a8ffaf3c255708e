"""The typed records that travel between the stages of a run, one definition each.

    rows ──prepare──▶ Request ──engine──▶ Completion ──finish──▶ ResultRow ──commit──▶ parts, StatsRow
                                                                              └──▶ ProgressEvent (listeners)
    the engine's pace ──▶ TimelineRow        a shard's run ──▶ Summary (summary-<shard>.json, the shard
                                             marker, the CLI's closing table)

A record written as a Parquet row (ResultRow, StatsRow, TimelineRow) names each column's Arrow type
on its field (``column``): ``output.schemas`` derives the file's schema from it, so a field and its
column cannot drift apart. Plain values only: vLLM's own types stay inside ``engines/``, so a stage
(and a test's fake engine) never imports vLLM.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
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
class TokenLogprob:
    """One generated token's log-probability, with the candidates the engine returned at its step."""

    token: str
    logprob: float
    top: tuple[tuple[str, float, int], ...] = ()  # (token, logprob, rank), best first


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str | None
    output_tokens: int
    reasoning: str | None = None  # model.reasoning_parser: the reasoning, and text is the answer
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the request asked (sampling logprobs)


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


def column(arrow: str, **kwargs: Any) -> Any:  # (RUF009 below: this is dataclasses.field)
    """A dataclass field that is a Parquet column of Arrow type ``arrow`` (a name in
    ``output.schemas.ARROW_TYPES``): the record is the one definition its file's schema is derived from."""
    return field(metadata={"arrow": arrow}, **kwargs)


def columns(record: type) -> list[tuple[str, str]]:
    """A row record's columns in file order: (name, Arrow type name) of each field that is one."""
    return [(f.name, f.metadata["arrow"]) for f in fields(record) if "arrow" in f.metadata]


@dataclass(kw_only=True)
class ResultRow:
    """One row of results/part-*.parquet: its fields in column order (the kept input columns after ``id``)."""

    id: str = column("string")
    kept: dict[str, Any] = field(default_factory=dict)
    output: str | None = column("string", default=None)
    reasoning: str | None = column("string", default=None)  # model.reasoning_parser only: no column without one
    finish_reason: str | None = column("string", default=None)
    prompt_tokens: int | None = column("int32", default=None)
    cached_prompt_tokens: int | None = column("int32", default=None)
    output_tokens: int = column("int32", default=0)
    error_code: str | None = column("string", default=None)
    error: str | None = column("string", default=None)
    adjustment: str | None = column("string", default=None)
    json: str | None = column("string", default=None)  # sampling.json_schema: the parsed output, canonical JSON
    samples: list[dict[str, Any]] | None = column("samples", default=None)  # n > 1: every sample; null for n = 1  # noqa: RUF009
    # OpenAI input only: rows that asked for logprobs, as JSON: per sample, ChatCompletion's logprobs content
    logprobs: str | None = column("string", default=None)
    batch: int = column("int32")

    def as_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name, _ in columns(ResultRow)}
        return {"id": self.id, **self.kept, **row}


REASONING_ONLY = frozenset({"reasoning"})  # result columns only an output with model.reasoning_parser has
LOGPROBS_ONLY = frozenset({"logprobs"})  # result columns only an output of an OpenAI batch file has


RESULT_NAMES = frozenset(name for name, _ in columns(ResultRow))  # a kept column may not take one


@dataclass
class StatsRow:
    """One row of stats/part-*.parquet: one committed batch. Spans overlap (batches share the engine):
    span_* rates are one batch's own pace; the run's throughput is in the summary and the timeline."""

    shard: str = column("string")
    run_id: str = column("string")
    batch: int = column("int32")
    submitted_at: datetime = column("timestamp")  # its first request went into the engine's queue  # noqa: RUF009
    started_at: datetime = column("timestamp")  # the engine first scheduled one of its requests  # noqa: RUF009
    finished_at: datetime = column("timestamp")  # its last request finished  # noqa: RUF009
    span_s: float = column("float64")  # finished_at - started_at; overlaps other batches' spans
    requests: int = column("int32")
    errors: int = column("int32")
    prompt_tokens: int = column("int64")
    cached_prompt_tokens: int = column("int64")
    output_tokens: int = column("int64")
    span_output_tok_s: float = column("float64")
    span_total_tok_s: float = column("float64")
    span_requests_s: float = column("float64")
    cache_hit_rate: float = column("float64")
    finish_stop: int = column("int32")
    finish_length: int = column("int32")
    finish_abort: int = column("int32")
    finish_error: int = column("int32")
    gpu_memory_used_gb: float | None = column("float64", default=None)
    gpu_memory_peak_gb: float | None = column("float64", default=None)
    gpu_utilization: float | None = column("float64", default=None)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TimelineRow:
    """One row of timeline/part-*.parquet: one interval of a run's generation time (observe.timeline);
    intervals tile it, so they add up."""

    shard: str = column("string")
    run_id: str = column("string")
    started_at: datetime = column("timestamp")  # noqa: RUF009
    finished_at: datetime = column("timestamp")  # noqa: RUF009
    interval_s: float = column("float64")
    output_tokens: int = column("int64")
    prompt_tokens: int = column("int64")
    cached_prompt_tokens: int = column("int64")
    output_tok_s: float = column("float64")
    total_tok_s: float = column("float64")
    requests_finished: int = column("int32")
    rows_committed: int = column("int32")
    requests_in_engine: int = column("int32")
    requests_running: int | None = column("int32")  # None: the engine keeps no counters (source batch-run)
    requests_waiting: int | None = column("int32")
    kv_cache_usage: float | None = column("float64")
    gpu_memory_used_gb: float | None = column("float64")
    gpu_utilization: float | None = column("float64")
    source: str = column("string")  # vllm: the engine's own counters; batch-run: counted from finished requests

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


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


class _ReadsAsMapping:
    """A summary part that still reads as the dict it was before it was typed (``s.output["rows"]``),
    for Python API users' code written then."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class ShardTotals(_ReadsAsMapping):
    """A shard's committed rows and errors (by code), over all its runs (resume.shard_totals)."""

    rows: int = 0
    errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)


@dataclass
class RunFigures(_ReadsAsMapping):
    """One run's totals and throughput, rounded as the summary shows them (stats.RunTotals.figures)."""

    requests: int
    errors: int
    errors_by_code: dict[str, int]
    prompt_tokens: int
    cached_prompt_tokens: int
    output_tokens: int
    generation_s: float  # first request submitted to last finished
    output_tok_s: float
    total_tok_s: float
    requests_s: float
    cache_hit_rate: float
    engine_restarts: int = 0  # after the engine died or stalled (engine.max_restarts)


@dataclass(frozen=True)
class EngineFailure(_ReadsAsMapping):
    """One failure of the engine in a run, after which it was restarted (or the run ended)."""

    cause: str
    at: str  # ISO time, UTC
    in_flight: int  # requests the engine held
    quarantined: int  # of those, made engine_failed error rows (in flight at two failures in a row)


@dataclass(frozen=True)
class Cost(_ReadsAsMapping):
    """GPU-hours and money of one run (observe.cost.cost_of)."""

    devices: int
    gpu_hours: float  # the whole run, engine start included
    gpu_hours_generating: float
    price: float | None  # per GPU-hour
    cost: float | None
    cost_per_m_output_tokens: float | None
    cost_per_m_total_tokens: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineSizing(_ReadsAsMapping):
    """How batch-run sized the engine from the job (``engine.max_num_seqs: auto``): what it chose and
    why (engines.sizing.choose), the KV capacity it estimated before the start and the one vLLM
    reported after it. It changes speed, not answers: it is in no fingerprint."""

    max_num_seqs: int
    max_cudagraph_capture_size: int | None  # CUDA graphs captured up to this batch; None: vLLM's default
    max_num_batched_tokens: int | None  # None: the profile's, untouched
    per_seq_tokens: int  # KV tokens one sequence holds at its longest: mean prompt (over n) + mean max_tokens
    sample_rows: int  # the rows whose token counts were taken (the input's first)
    kv_tokens_estimate: int | None  # before the start: from the model's config and the device's memory
    reason: str
    kv_tokens: int | None = None  # after the start: vLLM's KV cache, in tokens (None: not known)


@dataclass
class Summary:
    """A shard's run: ``summary-<shard>.json`` (``summary.json`` unsharded) and its completion marker,
    written by ``as_dict`` and read back by ``from_dict``/``load`` (the same definition both ways)."""

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
    output: ShardTotals  # the shard's committed totals
    this_run: RunFigures
    engine: dict[str, Any]  # the vllm.LLM arguments it ran with (less the model): vLLM's, passed through
    vllm: str
    host: str
    run_id: str
    gpu_memory_peak_gb: float | None = None
    cost: Cost | None = None
    input_changed: list[str] | None = None  # input files that changed during the run (then not complete)
    engine_failures: list[EngineFailure] | None = None  # each failure of the engine in this run, if any
    sizing: EngineSizing | None = None  # engine.max_num_seqs auto: what was chosen and why (None: not sized)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        """A summary as ``as_dict`` wrote it; raises ValueError (pydantic's) naming a wrong value."""
        from pydantic import TypeAdapter

        return TypeAdapter(cls).validate_python(d)

    @classmethod
    def load(cls, path: Path) -> Summary | None:
        """The summary file at ``path``; None where there is none or it cannot be read as one."""
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None


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
