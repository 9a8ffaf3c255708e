"""Which rows belong to which shard: a pure function of (id, shard count).

A stable hash (not Python's salted ``hash``) so that a retried Slurm task gets exactly the rows it
had. Only the CLI reads Slurm's environment (``shard_from_slurm``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
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


def shard_from_slurm(env: Mapping[str, str], recorded: int | None = None) -> Shard | None:
    """The shard of a Slurm array task, or None outside an array job.

    A task's shard is its index, ``SLURM_ARRAY_TASK_ID``, so that a resubmitted subset of the
    array (``--array=3,5``, in any order) runs exactly those shards. The shard count is the
    output's, fixed by its first run (``recorded``); for a new output it is the array's highest
    index + 1 (Slurm's task count would change with every resubmitted subset).
    """
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        if recorded is not None:
            count = recorded
        elif "SLURM_ARRAY_TASK_MAX" in env:
            count = int(env["SLURM_ARRAY_TASK_MAX"]) + 1
        else:
            count = int(env.get("SLURM_ARRAY_TASK_MIN", "0")) + int(env["SLURM_ARRAY_TASK_COUNT"])
    except (KeyError, ValueError) as e:
        raise JobError(f"Slurm array variables are incomplete or not numbers ({e}); pass --shard I/N") from e
    if not 0 <= task < count:
        fixed = "fixed by its first run" if recorded is not None else "the array's highest index + 1"
        raise JobError(f"SLURM_ARRAY_TASK_ID={task} is not a shard of this output: it has {count} shards "
                       f"(0-{count - 1}, {fixed}); submit array indices in that range")
    return Shard(task, count)
