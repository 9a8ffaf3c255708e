"""Each file batch-run writes has one typed record, and its schema or JSON comes from that record.

A field added to a row record without its column (or the other way round) fails here, as does a
summary or a job.json that does not read back as it was written.
"""

import json
from dataclasses import fields
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from batch_runner.config import JobSpec
from batch_runner.errors import JobError
from batch_runner.observe.stats import BatchTimes, Clock, RunTotals, batch_stats
from batch_runner.observe.timeline import Timeline
from batch_runner.output.job_record import JobRecord
from batch_runner.output.schemas import (
    ARROW_TYPES,
    RESULT_FIELDS,
    RESULT_NAMES,
    STATS_SCHEMA,
    TIMELINE_SCHEMA,
    results_schema,
    schema_of,
)
from batch_runner.records import RESULT_NAMES as RECORD_NAMES
from batch_runner.records import (
    Cost,
    EngineFailure,
    EngineSizing,
    ResultRow,
    RunFigures,
    ShardTotals,
    StatsRow,
    Summary,
    TimelineRow,
    columns,
)

ROWS = {ResultRow: pa.schema(RESULT_FIELDS), StatsRow: STATS_SCHEMA, TimelineRow: TIMELINE_SCHEMA}


@pytest.mark.parametrize("record", list(ROWS), ids=lambda r: r.__name__)
def test_every_field_of_a_row_record_is_a_column_of_its_file(record):
    names = [f.name for f in fields(record) if f.name != "kept"]  # kept: the input's columns, by the job
    assert [name for name, _ in columns(record)] == names == ROWS[record].names
    assert all(arrow in ARROW_TYPES for _, arrow in columns(record))
    assert schema_of(record).equals(ROWS[record])


def test_the_written_columns_keep_their_names_types_and_order():
    """The files' layout, pinned: readers of existing outputs depend on it."""
    kept = pa.schema([("title", pa.string())])
    assert results_schema(kept).names == ["id", "title", "output", "finish_reason", "prompt_tokens",
                                          "cached_prompt_tokens", "output_tokens", "error_code", "error",
                                          "adjustment", "json", "samples", "batch"]
    # model.reasoning_parser: a reasoning column after output, and each sample's reasoning
    assert results_schema(kept, reasoning=True).names == ["id", "title", "output", "reasoning", "finish_reason",
                                                          "prompt_tokens", "cached_prompt_tokens", "output_tokens",
                                                          "error_code", "error", "adjustment", "json", "samples",
                                                          "batch"]
    # an OpenAI batch file's output: a logprobs column (JSON text) before batch
    assert results_schema(kept, logprobs=True).names[-3:] == ["samples", "logprobs", "batch"]
    assert results_schema(kept, logprobs=True).field("logprobs").type == pa.string()
    assert RESULT_NAMES == RECORD_NAMES == set(results_schema(kept, reasoning=True, logprobs=True).names) - {"title"}
    assert str(results_schema(kept).field("samples").type) == \
        "list<item: struct<text: string, finish_reason: string, output_tokens: int32>>"
    assert str(results_schema(kept, reasoning=True).field("samples").type) == \
        "list<item: struct<text: string, reasoning: string, finish_reason: string, output_tokens: int32>>"
    assert STATS_SCHEMA.names[:12] == ["shard", "run_id", "batch", "submitted_at", "started_at", "finished_at",
                                       "span_s", "requests", "errors", "prompt_tokens", "cached_prompt_tokens",
                                       "output_tokens"]
    assert STATS_SCHEMA.field("submitted_at").type == pa.timestamp("ms", tz="UTC")
    assert TIMELINE_SCHEMA.names[-1] == "source" and TIMELINE_SCHEMA.field("requests_running").type == pa.int32()


def _result(**extra) -> ResultRow:
    return ResultRow(id="a", batch=0, kept={"title": "t"}, output="x", finish_reason="stop", prompt_tokens=3,
                     cached_prompt_tokens=1, output_tokens=2, **extra)


def test_a_result_row_fills_every_column():
    row = _result(adjustment="cut", json="{}", reasoning="r", error_code="e", error="e: bad", logprobs="[]",
                  samples=[{"text": "x", "reasoning": "r", "finish_reason": "stop", "output_tokens": 2}]).as_row()
    schema = results_schema(pa.schema([("title", pa.string())]), reasoning=True, logprobs=True)
    assert list(row) and set(row) == set(schema.names)
    stored = pa.Table.from_pylist([row], schema=schema).to_pylist()[0]
    assert stored == row  # nothing dropped, nothing null that the record had


def test_a_stats_row_as_written_fills_every_column():
    clock = Clock()
    stats = batch_stats("0000-of-0001", "r", 4, BatchTimes(clock.perf0, clock.perf0 + 1, clock.perf0 + 2), clock,
                        [_result().as_row()], {"gpu_memory_used_gb": 1.0, "gpu_memory_peak_gb": 2.0,
                                               "gpu_utilization": 50.0})
    row = stats.as_row()
    assert list(row) == STATS_SCHEMA.names
    stored = pa.Table.from_pylist([row], schema=STATS_SCHEMA).to_pylist()[0]
    assert all(stored[name] is not None for name in STATS_SCHEMA.names)
    assert stats.span_output_tok_s == 2.0 and stats.cache_hit_rate == pytest.approx(1 / 3)


def test_a_timeline_row_as_written_fills_every_column():
    clock, written = Clock(), []
    timeline = Timeline("0000-of-0001", "r", clock, 5.0, lambda: None,
                        lambda: {"gpu_memory_used_gb": 1.0, "gpu_utilization": 3.0},
                        lambda chunk, rows: written.append([r.as_row() for r in rows]))
    timeline.begin(clock.perf0)
    timeline.finished(7, 3, 1)
    row = timeline.tick(clock.perf0 + 2, 0)
    assert isinstance(row, TimelineRow) and list(written[-1][0]) == TIMELINE_SCHEMA.names
    stored = pa.Table.from_pylist(written[-1], schema=TIMELINE_SCHEMA).to_pylist()[0]
    no_counters = {"requests_running", "requests_waiting", "kv_cache_usage"}  # the fake has no engine counters
    assert all(stored[name] is not None for name in set(TIMELINE_SCHEMA.names) - no_counters)
    assert stored["output_tokens"] == 7 and stored["source"] == "batch-run"


def _summary() -> Summary:
    totals = RunTotals(requests=2, errors=1, prompt_tokens=10, cached_prompt_tokens=4, output_tokens=6,
                       generation_s=2.0)
    totals.error_codes.update(["too_long"])
    return Summary(
        job="j", model="m", model_path="/m", shard="0000-of-0001", status="row_errors", exit_status=3, complete=True,
        interrupted_by=None, started_at=datetime.now(timezone.utc).isoformat(), finished_at="later", duration_s=3.5,
        input_rows=2, shard_rows=2, skipped_done=0, output=ShardTotals(2, 1, {"too_long": 1}), this_run=totals.figures(),
        engine={"max_num_seqs": 8, "enforce_eager": True}, vllm="0.0", host="h", run_id="r", gpu_memory_peak_gb=None,
        cost=Cost(1, 0.001, 0.0005, 2.0, 0.002, 333.3, 125.0), input_changed=None,
        engine_failures=[EngineFailure("engine process 7 (EngineCore) ended: killed by signal 9 (SIGKILL)",
                                       "2026-11-30T07:00:00+00:00", 12, 0)],
        sizing=EngineSizing(2048, 2048, None, 848, 1000, 6_063_807, "why", kv_tokens=6_100_000))


def test_a_summary_round_trips_through_its_file(tmp_path):
    summary = _summary()
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary.as_dict()))
    back = Summary.load(path)
    assert back == summary and isinstance(back.this_run, RunFigures) and isinstance(back.cost, Cost)
    assert isinstance(back.engine_failures[0], EngineFailure)
    assert isinstance(back.sizing, EngineSizing) and back.sizing.max_num_seqs == 2048
    assert back.this_run.output_tok_s == 3.0 and back.output.errors_by_code == {"too_long": 1}


def test_a_summary_keeps_its_json_keys():
    d = _summary().as_dict()
    assert list(d) == ["job", "model", "model_path", "shard", "status", "exit_status", "complete", "interrupted_by",
                       "started_at", "finished_at", "duration_s", "input_rows", "shard_rows", "skipped_done",
                       "output", "this_run", "engine", "vllm", "host", "run_id", "gpu_memory_peak_gb", "cost",
                       "input_changed", "engine_failures", "sizing"]
    assert list(d["sizing"]) == ["max_num_seqs", "max_cudagraph_capture_size", "max_num_batched_tokens",
                                 "per_seq_tokens", "sample_rows", "kv_tokens_estimate", "reason", "kv_tokens"]
    assert list(d["output"]) == ["rows", "errors", "errors_by_code"]
    assert list(d["this_run"]) == ["requests", "errors", "errors_by_code", "prompt_tokens", "cached_prompt_tokens",
                                   "output_tokens", "generation_s", "output_tok_s", "total_tok_s", "requests_s",
                                   "cache_hit_rate", "engine_restarts"]
    assert list(d["cost"]) == ["devices", "gpu_hours", "gpu_hours_generating", "price", "cost",
                               "cost_per_m_output_tokens", "cost_per_m_total_tokens"]


def test_a_summary_of_the_wrong_shape_does_not_load(tmp_path):
    d = _summary().as_dict()
    d["this_run"]["requests"] = "many"
    (tmp_path / "summary.json").write_text(json.dumps(d))
    assert Summary.load(tmp_path / "summary.json") is None
    assert Summary.load(tmp_path / "absent.json") is None


def _job(**input_) -> JobSpec:
    return JobSpec.model_validate({"name": "j", "model": {"name": "m"}, "prompt": {"prompt_column": "text"},
                                   "input": {"path": "in.jsonl", **input_}})


def _record(job: JobSpec) -> dict:
    return {"fingerprint_hash": "abc", "fingerprint": {"shards": 2}, "kept_schema": [["title", "string"]],
            "job": json.loads(job.model_dump_json()), "output_id": "u1", "input_blocks": {"files": {}}}


def test_job_json_round_trips_into_its_job_spec(tmp_path):
    job = _job(keep_columns=["title"])
    (tmp_path / "job.json").write_text(json.dumps(_record(job)))
    record = JobRecord.load(tmp_path)
    assert record.as_dict() == _record(job) and list(record.as_dict()) == list(_record(job))
    assert record.spec == job and record.shards == 2


def test_job_json_of_an_openai_input_validates_again(tmp_path):
    job = JobSpec.model_validate({"name": "j", "model": {"name": "m"}, "input": {"path": "b.jsonl", "format": "openai"}})
    (tmp_path / "job.json").write_text(json.dumps(_record(job)))
    assert JobRecord.load(tmp_path).spec == job


def test_an_older_job_json_still_loads(tmp_path):
    old = _record(_job())
    for key in ("kept_schema", "output_id", "input_blocks"):  # keys later batch-runs added
        del old[key]
    old["job"]["engine"]["a_removed_option"] = 1
    (tmp_path / "job.json").write_text(json.dumps(old))
    record = JobRecord.load(tmp_path)
    assert record.output_id is None and "output_id" not in record.as_dict()  # ownership: an older output
    assert record.spec.name == "j"


@pytest.mark.parametrize("change, named", [
    (lambda r: r.update(fingerprint_hash=7), "fingerprint_hash"),
    (lambda r: r.update(fingerprint=[1]), "fingerprint"),
    (lambda r: r["job"]["model"].update(name=5), "model.name"),
])
def test_a_job_json_of_the_wrong_types_is_an_error_naming_the_file(tmp_path, change, named):
    record = _record(_job())
    change(record)
    (tmp_path / "job.json").write_text(json.dumps(record))
    with pytest.raises(JobError, match=rf"{tmp_path / 'job.json'}: .*{named}"):
        JobRecord.load(tmp_path).spec  # noqa: B018 (the spec is validated when first read)


def test_no_job_json(tmp_path):
    assert JobRecord.load(tmp_path) is None
    with pytest.raises(JobError, match="not a batch-run output"):
        JobRecord.require(tmp_path)


def test_summary_parts_still_read_as_the_dicts_they_were():
    """Python API users read Execution.summaries' parts as dicts before they were typed."""
    from batch_runner.records import ShardTotals

    totals = ShardTotals(rows=3, errors=1, errors_by_code={"template_error": 1})
    assert totals["rows"] == 3 and totals.get("errors") == 1 and totals.get("nope") is None
    with pytest.raises(KeyError):
        totals["nope"]
