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

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


def umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new file under the process's umask (mkstemp alone gives 0600, which a
    team sharing an output folder cannot read)."""
    return 0o666 & ~umask()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, and rename into place; the file appears whole or not at all.

    On failure the temporary file is removed, and an OSError names ``path`` (not the temporary name,
    and not nothing, as pyarrow's do), so that the caller's message says which file failed.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, file_mode())
        finally:
            os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):  # else the next run's sweep_temporaries removes it
                Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(path)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
    atomic_write(path, write)


def write_parquet(path: Path, table: pa.Table, metadata: dict[str, str], compression: str) -> None:
    meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
    table = table.replace_schema_metadata(meta)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression))


def part_name(shard: str, run_id: str, batch: int) -> str:
    return f"part-{shard}-{run_id}-b{batch:06d}.parquet"


def flush_part_name(shard: str, run_id: str, flush: int) -> str:
    """A part of rows from batches still open, committed because they had waited output.flush_s."""
    return f"part-{shard}-{run_id}-f{flush:06d}.parquet"


def timeline_part_name(shard: str, run_id: str, chunk: int) -> str:
    return f"part-{shard}-{run_id}-t{chunk:04d}.parquet"


def committed_parts(folder: Path) -> list[Path]:
    """The complete part files; temporary files (dot-names) are never data."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet") if not p.name.startswith("."))


def sweep_temporaries(out: Path, shard: str) -> int:
    """Remove temporary files left by a crashed writer of this shard; returns how many.

    Only this shard's: other shards may be writing into the same folders right now.
    """
    n = 0
    for folder in (out, out / "results", out / "stats", out / "timeline"):
        for tmp in folder.glob(f".*{shard}*.tmp") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)
            n += 1
    return n


# The kept columns' types as job.json records them ([name, type] pairs), back to an Arrow schema.
_TYPES = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "double": pa.float64(),
          "binary": pa.binary()}


def schema_from_record(fields: list[list[str]]) -> pa.Schema:
    return pa.schema([pa.field(name, _TYPES.get(type_, pa.string())) for name, type_ in fields])
