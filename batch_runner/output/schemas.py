"""The output directory: results and stats as Parquet parts, written atomically.

Layout of ``<output>/``:
    job.json                 what determines the results (the resume fingerprint) and the effective job
    results/part-*.parquet   one file per committed batch; together they read as one dataset
    stats/part-*.parquet     one row per committed batch
    timeline/part-*.parquet  one row per interval of generation (the engine's pace over time)
    summary-<shard>.json     totals of the latest run of that shard
    shards/<shard>.done      completion marker of a finished shard

Every file is written under a temporary name starting with '.', fsynced, then renamed: readers
(pyarrow.dataset ignores dot-files) never see a file cut short by a crash.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

RESULT_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("output", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("cached_prompt_tokens", pa.int32()),
    pa.field("output_tokens", pa.int32()),
    pa.field("error_code", pa.string()),
    pa.field("error", pa.string()),
    pa.field("adjustment", pa.string()),
    # sampling.json_schema: the parsed output, as canonical JSON text
    pa.field("json", pa.string()),
    # n > 1: every sample (the first is also in output); null when n is 1
    pa.field("samples", pa.list_(pa.struct([("text", pa.string()), ("finish_reason", pa.string()),
                                            ("output_tokens", pa.int32())]))),
    pa.field("batch", pa.int32()),
]
RESULT_NAMES = frozenset(f.name for f in RESULT_FIELDS)
UNSTORABLE = "unstorable_value"  # the error code of a row whose kept value does not fit its column

# One row per committed batch. Spans overlap (batches share the engine): span_* rates are one
# batch's own pace; the run's throughput is in summary.json and the timeline.
STATS_SCHEMA = pa.schema([
    pa.field("shard", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("batch", pa.int32()),
    pa.field("submitted_at", pa.timestamp("ms", tz="UTC")),
    pa.field("started_at", pa.timestamp("ms", tz="UTC")),
    pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    pa.field("span_s", pa.float64()),
    pa.field("requests", pa.int32()),
    pa.field("errors", pa.int32()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("cached_prompt_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("span_output_tok_s", pa.float64()),
    pa.field("span_total_tok_s", pa.float64()),
    pa.field("span_requests_s", pa.float64()),
    pa.field("cache_hit_rate", pa.float64()),
    pa.field("finish_stop", pa.int32()),
    pa.field("finish_length", pa.int32()),
    pa.field("finish_abort", pa.int32()),
    pa.field("finish_error", pa.int32()),
    pa.field("gpu_memory_used_gb", pa.float64()),
    pa.field("gpu_memory_peak_gb", pa.float64()),
    pa.field("gpu_utilization", pa.float64()),
])

# One row per interval of a run's generation time (timeline.py); intervals tile it, so they add up.
TIMELINE_SCHEMA = pa.schema([
    pa.field("shard", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("started_at", pa.timestamp("ms", tz="UTC")),
    pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    pa.field("interval_s", pa.float64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("cached_prompt_tokens", pa.int64()),
    pa.field("output_tok_s", pa.float64()),
    pa.field("total_tok_s", pa.float64()),
    pa.field("requests_finished", pa.int32()),
    pa.field("rows_committed", pa.int32()),
    pa.field("requests_in_engine", pa.int32()),
    pa.field("requests_running", pa.int32()),
    pa.field("requests_waiting", pa.int32()),
    pa.field("kv_cache_usage", pa.float64()),
    pa.field("gpu_memory_used_gb", pa.float64()),
    pa.field("gpu_utilization", pa.float64()),
    pa.field("source", pa.string()),
])


def results_schema(kept: pa.Schema) -> pa.Schema:
    """Result columns: id, the kept input columns, then the generation columns."""
    return pa.schema([RESULT_FIELDS[0], *kept, *RESULT_FIELDS[1:]])


def storable(value: Any, type_: pa.DataType) -> Any:
    """A kept input value in its column's type; raises ValueError when it cannot be stored there.

    Text columns take any value: scalars and nested values as JSON text, other objects (dates,
    decimals) as their ``str``. Numbers and booleans must fit their column.
    """
    if value is None:
        return None
    if pa.types.is_string(type_):
        if not isinstance(value, str):
            try:
                value = json.dumps(value, ensure_ascii=False) if isinstance(value, (bool, int, float, list, dict)) \
                    else str(value)
            except (TypeError, ValueError, RecursionError):
                value = json.dumps(value, ensure_ascii=False, default=str)  # dict keys or items of other types
        value.encode("utf-8")  # a lone surrogate (from a JSON escape) is not storable text
        return value
    if pa.types.is_floating(type_) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if pa.types.is_integer(type_) and isinstance(value, int) and not isinstance(value, bool) \
            and -2**63 <= value < 2**63:
        return value
    if pa.types.is_boolean(type_) and isinstance(value, bool):
        return value
    if pa.types.is_binary(type_) and isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"{type(value).__name__} value does not fit the column's type {type_}")


def storable_rows(rows: list[dict[str, Any]], schema: pa.Schema, kept: list[str]) -> list[dict[str, Any]]:
    """Result rows whose kept values fit their columns, so that no row's data can make a write fail.

    A kept value that cannot be stored in its column is left out (null) and the row becomes an
    ``unstorable_value`` error row that names the column; its generated output is kept. A row that
    already has an error keeps it (it is why the row has no output), the column named after it. An
    error message, which may quote a row's value, is stored with unencodable characters escaped.
    """
    types = {name: schema.field(name).type for name in kept}
    clean = []
    for row in rows:
        row, bad = dict(row), []
        for name in kept:
            try:
                row[name] = storable(row.get(name), types[name])
            except (ValueError, TypeError, RecursionError, UnicodeError, OverflowError) as e:
                row[name] = None
                bad.append(f"column '{name}': {str(e)[:200]}")
        if bad:
            note = f"the input value cannot be stored in the results ({'; '.join(bad)})"
            if row.get("error_code"):
                row["error"] = f"{row['error']}; {UNSTORABLE}: {note}"
            else:
                row["error_code"], row["error"] = UNSTORABLE, f"{UNSTORABLE}: {note}"
        if row.get("error") is not None:
            row["error"] = _text(row["error"])
        clean.append(row)
    return clean


def _text(message: str) -> str:
    """A message as storable text: a lone surrogate (quoted from a row's value) as its escape."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


# The kept columns' types as job.json records them ([name, type] pairs), back to an Arrow schema.
_TYPES = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "double": pa.float64(),
          "binary": pa.binary()}


def schema_from_record(fields: list[list[str]]) -> pa.Schema:
    return pa.schema([pa.field(name, _TYPES.get(type_, pa.string())) for name, type_ in fields])
