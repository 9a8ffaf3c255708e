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

from ..records import LOGPROBS_ONLY, REASONING_ONLY, ResultRow, StatsRow, TimelineRow, columns

# The Arrow type of each type name a row record gives its columns (records.column).
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "samples": pa.list_(pa.struct([("text", pa.string()), ("finish_reason", pa.string()),
                                   ("output_tokens", pa.int32())])),
}
# n > 1 with model.reasoning_parser: each sample with its own reasoning (text is its answer)
SAMPLES_WITH_REASONING = pa.list_(pa.struct([("text", pa.string()), ("reasoning", pa.string()),
                                             ("finish_reason", pa.string()), ("output_tokens", pa.int32())]))


def schema_of(record: type) -> pa.Schema:
    """The Arrow schema of a row record (records.ResultRow, StatsRow, TimelineRow): its column fields, in order."""
    return pa.schema([pa.field(name, ARROW_TYPES[arrow]) for name, arrow in columns(record)])


RESULT_FIELDS = list(schema_of(ResultRow))  # id, then (after the kept columns) the generation columns
RESULT_NAMES = frozenset(f.name for f in RESULT_FIELDS)  # records.RESULT_NAMES: both are ResultRow's columns
UNSTORABLE = "unstorable_value"  # the error code of a row whose kept value does not fit its column
STATS_SCHEMA = schema_of(StatsRow)  # one row per committed batch
TIMELINE_SCHEMA = schema_of(TimelineRow)  # one row per interval of a run's generation time


def results_schema(kept: pa.Schema, reasoning: bool = False, logprobs: bool = False) -> pa.Schema:
    """Result columns: id, the kept input columns, then the generation columns. The reasoning
    column (and each sample's reasoning) only with ``model.reasoning_parser``, the logprobs column
    only for an OpenAI batch file (``input.format: openai``): outputs written without them keep the
    schema they always had, so they resume."""
    left_out = (set() if reasoning else REASONING_ONLY) | (set() if logprobs else LOGPROBS_ONLY)
    generated = [f.with_type(SAMPLES_WITH_REASONING) if reasoning and f.name == "samples" else f
                 for f in RESULT_FIELDS[1:] if f.name not in left_out]
    return pa.schema([RESULT_FIELDS[0], *kept, *generated])


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
