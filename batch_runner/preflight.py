"""Pre-flight: one streaming pass over the input before any engine starts.

It finds every problem it can (malformed lines, missing or duplicate ids, columns that no row
has) and reports them together, and it learns the types of the columns to keep, so that every
results part gets the same schema. Memory holds the set of ids and a few counters, nothing more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .config import InputSpec
from .errors import JobError
from .inputs import INVALID, describe_source, iter_rows
from .sharding import Shard

MAX_PROBLEMS = 20


@dataclass
class InputReport:
    rows: int = 0  # rows in the input (after limit)
    shard_rows: int = 0  # rows this shard owns
    kept_schema: pa.Schema = field(default_factory=lambda: pa.schema([]))


def row_id(spec: InputSpec, index: int, data: dict[str, Any]) -> Any:
    return data.get(spec.id_column) if spec.id_column else str(index)


class _TypeTracker:
    """The Arrow type a kept column gets: its values' common type, else JSON text."""

    def __init__(self) -> None:
        self.kinds: set[str] = set()

    def add(self, value: Any) -> None:
        if value is not None:
            self.kinds.add("bool" if isinstance(value, bool) else type(value).__name__)

    def arrow_type(self) -> pa.DataType:
        k = self.kinds
        if k <= {"str"}:
            return pa.string()
        if k == {"bool"}:
            return pa.bool_()
        if k == {"int"}:
            return pa.int64()
        if k <= {"int", "float"}:
            return pa.float64()
        return pa.string()  # mixed or nested: stored as JSON text


def coerce(value: Any, type_: pa.DataType) -> Any:
    """A kept value in the column's type (nested or mixed values become JSON text)."""
    if value is None:
        return None
    if pa.types.is_string(type_) and not isinstance(value, str):
        return json.dumps(value, default=str)
    if pa.types.is_floating(type_):
        return float(value)
    return value


def check_input(spec: InputSpec, columns: dict[str, str], shard: Shard) -> InputReport:
    """Stream the input once; raise one ``JobError`` listing every problem found.

    ``columns`` maps each column the job reads to what reads it, for the messages.
    """
    problems: list[str] = []
    seen: dict[str, int] = {}  # id -> input row number (an int: 1M ids must fit in little memory)
    roles = {c: "input.keep_columns" for c in spec.keep_columns}
    roles.update(columns)
    if spec.id_column:
        roles[spec.id_column] = "input.id_column"
    present: dict[str, int] = {c: 0 for c in roles}
    trackers = {c: _TypeTracker() for c in spec.keep_columns}
    report = InputReport()

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    try:
        for row in iter_rows(spec):
            report.rows += 1
            if INVALID in row.data:
                problem(row.data[INVALID])
                continue
            for c in present:
                if c in row.data:
                    present[c] += 1
            for c, t in trackers.items():
                t.add(row.data.get(c))
            rid = row_id(spec, row.index, row.data)
            if rid is None:
                problem(f"{row.where}: id column '{spec.id_column}' is missing or null")
                continue
            rid = str(rid)
            if rid in seen:
                problem(f"{row.where}: duplicate id {rid!r} (first at input row {seen[rid] + 1})")
            else:
                seen[rid] = row.index
            if shard.owns(rid):
                report.shard_rows += 1
    except JobError as e:
        problems.extend(e.problems)  # a reader error ends the pass; report it with the rest
    source = describe_source(spec)
    if report.rows == 0 and not problems:
        problems.append(f"{source}: the input is empty (no rows)")
    for c, n in sorted(present.items()):
        if report.rows and n == 0:
            problems.insert(0, f"{source}: column '{c}' (used by {roles[c]}) is in no row")
    if problems:
        truncated = ["... (more problems not shown)"] if len(problems) >= MAX_PROBLEMS else []
        raise JobError(problems + truncated)
    report.kept_schema = pa.schema([pa.field(c, trackers[c].arrow_type()) for c in spec.keep_columns])
    return report
