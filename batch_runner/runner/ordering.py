"""The order in which rows go to the engine: prefix groups within a read-ahead window.

Rows whose system prompts match are submitted together, so the prefix cache holds each prefix
while its rows run, instead of evicting and recomputing it. Grouping happens inside a window of
rows read ahead, so memory stays bounded however large the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..config import JobSpec
from ..inputs.readers import iter_rows, row_id

T = TypeVar("T")


def grouped(rows: Iterable[T], key: Callable[[T], str], window: int) -> Iterator[T]:
    """Rows reordered so that equal keys are adjacent within each window (first-seen key order)."""
    buckets: dict[str, list[T]] = {}
    held = 0
    for row in rows:
        buckets.setdefault(key(row), []).append(row)
        held += 1
        if held >= window:
            for bucket in buckets.values():
                yield from bucket
            buckets, held = {}, 0
    for bucket in buckets.values():
        yield from bucket


def chunked(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def rows_to_run(job: JobSpec, owns: Callable[[str, dict], bool], skip: set[str],
                prefix_key: Callable[[dict], str]) -> Iterator:
    """The shard's (id, row) pairs (``owns``) not in ``skip``, streamed in input order, or grouped by
    shared prefix."""
    spec, p = job.input, job.prompt
    rows = ((rid, row) for row in iter_rows(spec)
            if owns(rid := str(row_id(spec, row.index, row.data)), row.data) and rid not in skip)
    if p.group_by_prefix:
        rows = grouped(rows, lambda item: prefix_key(item[1].data), p.group_window)
    return rows
