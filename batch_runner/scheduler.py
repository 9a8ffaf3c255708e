"""The order in which rows go to the engine: prefix groups within a read-ahead window.

Rows whose system prompts match are submitted together, so the prefix cache holds each prefix
while its rows run, instead of evicting and recomputing it. Grouping happens inside a window of
rows read ahead, so memory stays bounded however large the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

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
