"""Which rows are this shard's: by a stable hash of the id (a pure function of id and shard count),
or by prefix affinity.

A stable hash (not Python's salted ``hash``) so that a retried Slurm task gets exactly the rows it
had. Only the Slurm executor reads Slurm's environment (``executors.slurm``).

Prefix affinity: the rows of one shared prompt prefix go to one shard.

By id hash, the rows of one system prompt are spread over up to N shards, and every shard prefills
that prefix again: the prefix work grows with the number of shards. With ``prompt.group_by_prefix``
on and more than one shard, a counting pass over the whole input (past any --limit) sizes each
prefix group, and the groups are dealt to shards, largest first, each to the least-loaded shard.
A group larger than a fair share is split into pieces, so that one prefix (W1) still spreads evenly;
a row of a split group goes to a piece by a hash of its id, in proportion to the pieces' sizes (not by
position: a ``--limit`` run then still gives every shard its share). Rows whose prefix no other row
shares keep the id hash.

The assignment is a pure function of the input and the job, so every task of an array (and every
data_parallel worker) computes the same one; its digest is part of the output's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..config import JobSpec
from ..errors import JobError


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    @property
    def label(self) -> str:
        return f"{self.index:04d}-of-{self.count:04d}"

    def owns(self, row_id: str) -> bool:
        return self.count == 1 or shard_of(row_id, self.count) == self.index


ALL = Shard(0, 1)


def shard_of(row_id: str, count: int) -> int:
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> Shard:
    """``I/N`` with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise JobError(f"--shard {text!r}: expected I/N, e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise JobError(f"--shard {text!r}: need 0 <= I < N")
    return Shard(i, n)
from .readers import iter_rows, row_id


@dataclass
class Assignment:
    count: int
    pieces: dict[str, list[tuple[int, int]]]  # prefix key -> [(shard, rows), ...] in input order

    @property
    def digest(self) -> str:
        text = json.dumps([self.count, sorted(self.pieces.items())], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(sizes: dict[str, int], singles: list[str], count: int) -> Assignment:
    """Deal prefix groups (``sizes``: key -> rows, two or more) to ``count`` shards; ``singles`` are the
    ids of rows whose prefix is their own (they keep the id hash, and count towards the load)."""
    load = [0] * count
    for rid in singles:
        load[shard_of(rid, count)] += 1
    fair = max(1, math.ceil((sum(sizes.values()) + len(singles)) / count))
    chunks = [(key, i, min(fair, n - i * fair)) for key, n in sizes.items() for i in range(math.ceil(n / fair))]
    chunks.sort(key=lambda c: (-c[2], c[0], c[1]))  # largest first; ties in a fixed order
    owner: dict[tuple[str, int], int] = {}
    for key, i, n in chunks:
        target = min(range(count), key=lambda s: (load[s], s))
        owner[key, i] = target
        load[target] += n
    pieces = {key: [(owner[key, i], min(fair, n - i * fair)) for i in range(math.ceil(n / fair))]
              for key, n in sizes.items()}
    return Assignment(count, pieces)


def assign(job: JobSpec, prefix_key: Callable[[dict], str], count: int) -> Assignment:
    """The counting pass: each prefix group's size over the whole input, then ``plan``."""
    spec = job.input
    sizes: dict[str, int] = {}
    first: dict[str, str] = {}  # key -> the id of its first row (for groups of one)
    for row in iter_rows(spec, limited=False):
        key = prefix_key(row.data)
        sizes[key] = sizes.get(key, 0) + 1
        first.setdefault(key, str(row_id(spec, row.index, row.data)))
    singles = [first[k] for k, n in sizes.items() if n == 1]
    return plan({k: n for k, n in sizes.items() if n > 1}, singles, count)


@dataclass
class Membership:
    """Which rows one shard owns: a pure function of the row's id and prefix."""

    shard: Shard
    assignment: Assignment | None = None
    prefix_key: Callable[[dict], str] | None = None

    def owns(self, rid: str, data: dict) -> bool:
        return self.shard.count == 1 or self.owner(rid, data) == self.shard.index

    def owner(self, rid: str, data: dict) -> int:
        """The index of the shard (of ``shard.count``) that owns the row."""
        pieces = self.assignment.pieces.get(self.prefix_key(data)) if self.assignment else None
        if pieces is None:
            return shard_of(rid, self.shard.count)
        if len(pieces) == 1:
            return pieces[0][0]
        point = shard_of(rid, sum(rows for _, rows in pieces))  # uniform over the group's rows
        for owner, rows in pieces:
            if point < rows:
                return owner
            point -= rows
        raise AssertionError("unreachable: point < the sum of the rows")
