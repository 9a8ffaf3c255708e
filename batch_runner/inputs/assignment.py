"""Which rows belong to which shard: a pure function of (id, shard count).

A stable hash (not Python's salted ``hash``) so that a retried Slurm task gets exactly the rows it
had. Only the Slurm executor reads Slurm's environment (``executors.slurm``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

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
