"""Which files in an output folder batch-run wrote for this output: told by content, not by name.

Every part batch-run writes carries, in its Parquet footer, the output's id (made once, when
job.json is created) and the job's fingerprint hash. The footer also records the part's own file name: a part copied under another name in the same
output, or renamed, would count its rows twice (or count a batch under another run) and is
foreign too. Anything else in ``results/``, ``stats/`` or
``timeline/`` (a part of another job or output copied or linked in, a link of any kind, a file that
is not Parquet, a part with another schema) is foreign: status, merge, report and a run refuse the
output, naming each such file, instead of counting it as done. Only footers are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import JobError
from .schemas import STATS_SCHEMA, TIMELINE_SCHEMA, results_schema, schema_from_record

META_KEY = b"batch_runner"  # the footer's key-value entry of every part: JSON with output_id, fingerprint_hash,
# shard and the name the part was written as
FOLDERS = ("results", "stats", "timeline")
_PART = re.compile(r"part-(\d{4}-of-\d{4})-.+\.parquet")
MAX_NAMED = 20


@dataclass(frozen=True)
class Foreign:
    path: Path
    why: str


class ForeignFiles(JobError):
    """Files in the output folder that batch-run did not write for it."""


def part_identity(record: dict[str, Any]) -> dict[str, str]:
    """What a part's footer carries to say whose it is (from the output's job.json)."""
    return {"output_id": record.get("output_id", ""), "fingerprint_hash": record.get("fingerprint_hash", "")}


def foreign_files(out: Path, record: dict[str, Any] | None) -> list[Foreign]:
    """Every entry of the output's part folders that is not a part batch-run wrote for this output.

    ``record`` is the output's job.json (None: there is none, so no part can be this output's).
    Hidden names are skipped: they are batch-run's temporary files (and readers skip them too).
    """
    found = []
    for name in FOLDERS:
        folder = out / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            found.append(Foreign(folder, "a link or a file where batch-run keeps a folder"))
            continue
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if not path.name.startswith((".", "_")) and (why := _why_foreign(path, name, record)):
                found.append(Foreign(path, why))
    return found


def _why_foreign(path: Path, folder: str, record: dict[str, Any] | None) -> str | None:
    if path.is_symlink():
        return "a link (batch-run writes regular files only)"
    if not path.is_file():
        return "not a regular file"
    name = _PART.fullmatch(path.name)
    if name is None:
        return "not a batch-run part name"
    try:
        with pq.ParquetFile(path) as f:  # the footer only
            meta, schema = f.metadata, f.schema_arrow
    except FileNotFoundError:
        return None  # gone since the listing: a --retry-errors rewrite emptied it
    except (pa.ArrowException, OSError) as e:
        return f"not a readable Parquet file ({str(e)[:120]})"
    if record is None:
        return "the output has no job.json to say whose it is"
    return _check_footer(meta, schema, folder, path.name, name.group(1), record)


def _check_footer(meta: pq.FileMetaData, schema: pa.Schema, folder: str, file_name: str, label: str,
                  record: dict[str, Any]) -> str | None:
    try:
        info = json.loads((meta.metadata or {}).get(META_KEY, b"null")) or {}
    except ValueError:
        info = {}
    if "output_id" in record:  # job.json of an older batch-run has none: its parts cannot say whose they are
        if not info:
            return "no batch-run metadata in its footer"
        if info.get("output_id") != record["output_id"]:
            return "written for another output"
        if info.get("fingerprint_hash") != record.get("fingerprint_hash"):
            return "written for another job"
        if info.get("shard") != label:
            return f"its footer says shard {info.get('shard')}, its name {label}"
        written_as = info.get("name")  # parts written before names were recorded have none
        if written_as is not None and written_as != file_name:
            return f"a copy of {written_as} or that part renamed (its footer records that name)"
    expected = _schema(folder, record)
    if expected is not None and not schema.remove_metadata().equals(expected):
        return "another schema than this output's"
    return None


def _schema(folder: str, record: dict[str, Any]) -> pa.Schema | None:
    if folder == "stats":
        return STATS_SCHEMA
    if folder == "timeline":
        return TIMELINE_SCHEMA
    if "kept_schema" not in record:
        return None
    model = (record.get("fingerprint") or {}).get("model") or {}
    logprobs = (record.get("fingerprint") or {}).get("logprobs_column") is True  # resume.fingerprint
    return results_schema(schema_from_record(record["kept_schema"]), model.get("reasoning_parser") is not None,
                          logprobs=logprobs)


def refuse_foreign(out: Path, record: dict[str, Any] | None) -> None:
    """Exit 2 naming each foreign file (and what to do) when the output holds any."""
    if found := foreign_files(out, record):
        more = [f"... and {len(found) - MAX_NAMED} more"] if len(found) > MAX_NAMED else []
        raise ForeignFiles([f"{f.path}: {f.why}" for f in found[:MAX_NAMED]] + more + [
            f"{out} holds files batch-run did not write for this output (above); they are not counted as done. "
            "Move them out of the folder (a part of another output belongs there), then run again."])
