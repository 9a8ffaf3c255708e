"""A fake engine for tests of the runner's own logic: exactly-once paths, commits, the output contract.

It has the real engine's interface (submit, unfinished, poll, abort, close, max_model_len) and
answers deterministically: each request's text names its prompt length, so a test can check every
row got its own answer. It never stands in for the path a user runs: the end-to-end tests drive
the real vLLM engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batch_runner.engine import Completion, Sample


@dataclass
class FakeEngine:
    max_model_len: int = 2048
    per_poll: int = 3  # requests finished per poll, oldest first
    latency_s: float = 0.0  # sleep per poll
    output_tokens: int = 5
    stall: Callable[[str], bool] = lambda key: False  # requests that never finish
    submitted: list[str] = field(default_factory=list)
    _queue: list[tuple[str, int]] = field(default_factory=list)

    def submit(self, key: str, token_ids: list[int], params, lora=None) -> None:
        self.submitted.append(key)
        self._queue.append((key, len(token_ids)))

    def unfinished(self) -> int:
        return len(self._queue)

    def poll(self) -> list[Completion]:
        if self.latency_s:
            time.sleep(self.latency_s)
        ready = [q for q in self._queue if not self.stall(q[0])][: self.per_poll]
        if not ready and self._queue:  # only stalled requests are left: the engine "dies"
            raise RuntimeError("fake engine died")
        for q in ready:
            self._queue.remove(q)
        return [Completion(key, [Sample(f"answer to {n} tokens", "stop", self.output_tokens)], n, 0)
                for key, n in ready]

    def abort(self, keys: list[str]) -> None:
        self._queue = [q for q in self._queue if q[0] not in set(keys)]

    def close(self) -> None:
        self._queue.clear()


def batch_of(key: str) -> int:
    """The runner's batch number in a request key (run_id:batch:position)."""
    return int(key.split(":")[1])
