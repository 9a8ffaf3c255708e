"""A fake engine for tests of the runner's own logic: exactly-once paths, commits, the output contract.

It implements the engine protocol (``batch_runner.engines.vllm_engine.Engine``: submit, unfinished, poll, abort,
close, max_model_len) and answers deterministically: each request's text names its prompt length, so
a test can check every row got its own answer. Latency, rejections, stalls, a hang and a death are
configurable. It never stands in for the path a user runs: the end-to-end tests drive vLLM.

``python tests/fake_engine.py ARGS`` runs the CLI with it in a process of its own (for the paths
that end a process: kill -9, a second signal, the stop watchdog); its settings come as JSON in the
environment variable FAKE_ENGINE.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batch_runner.errors import RowError
from batch_runner.records import Completion, Request, Sample


@dataclass
class FakeEngine:
    max_model_len: int = 2048
    per_poll: int = 3  # requests finished per poll, oldest first
    latency_s: float = 0.0  # sleep per poll
    output_tokens: int = 5
    stall: Callable[[str], bool] = lambda key: False  # requests that never finish (then the engine "dies")
    reject: Callable[[Request], bool] = lambda request: False  # requests refused at submit (error rows)
    hold: list[str] = field(default_factory=list)  # key endings (":batch:position") that never finish
    hang_after: int | None = None  # polls after which poll never returns (an engine that stopped answering)
    on_poll: Callable[[int], None] = lambda polls: None  # called with the poll count (e.g. to send a signal)
    close_s: float = 0.0  # how long close takes (vLLM's teardown takes seconds)
    fail_start: str | None = None  # the engine does not start: vLLM's error message (a value it refuses)
    submitted: list[str] = field(default_factory=list)
    polls: int = 0
    _queue: list[tuple[str, int]] = field(default_factory=list)

    def start(self, args: dict) -> "FakeEngine":
        """What stands in for ``get_engine``: this engine, or the start's failure as vLLM's would read."""
        if self.fail_start is not None:
            from batch_runner.engines.vllm_engine import start_failure

            raise start_failure(args, ValueError(self.fail_start))
        return self

    def submit(self, request: Request) -> None:
        if self.reject(request):
            raise RowError("engine_rejected", "the fake engine rejects this request")
        self.submitted.append(request.key)
        self._queue.append((request.key, len(request.token_ids)))

    def unfinished(self) -> int:
        return len(self._queue)

    def poll(self) -> list[Completion]:
        self.polls += 1
        self.on_poll(self.polls)
        if self.hang_after is not None and self.polls > self.hang_after:
            while True:
                time.sleep(1)
        if self.latency_s:
            time.sleep(self.latency_s)
        ready = [q for q in self._queue if not self.stall(q[0]) and not q[0].endswith(tuple(self.hold))]
        ready = ready[: self.per_poll]
        if not ready and self.hold:  # only held requests are left: they run on, as a long row does
            time.sleep(0.05)
            return []
        if not ready and self._queue:  # only stalled requests are left: the engine "dies"
            raise RuntimeError("fake engine died")
        for q in ready:
            self._queue.remove(q)
        now = time.perf_counter()
        return [Completion(key, [Sample(f"answer to {n} tokens", "stop", self.output_tokens)], n, 0, now, now)
                for key, n in ready]

    def abort(self, keys: list[str]) -> None:
        self._queue = [q for q in self._queue if q[0] not in set(keys)]

    def close(self) -> None:
        self._queue.clear()
        time.sleep(self.close_s)


def batch_of(key: str) -> int:
    """The runner's batch number in a request key (run_id:batch:position)."""
    return int(key.split(":")[1])


def main() -> None:
    import batch_runner.engines.vllm_engine
    import batch_runner.runner.shard
    import batch_runner.runner.stop
    from batch_runner.cli import entry

    settings = json.loads(os.environ.get("FAKE_ENGINE", "{}"))
    batch_runner.runner.stop.STOP_GRACE_S = settings.pop("stop_grace_s", batch_runner.runner.stop.STOP_GRACE_S)
    settings_slow_preflight = settings.pop("slow_preflight_s", 0)
    engine = FakeEngine(**settings)
    batch_runner.runner.shard.get_engine = engine.start
    if slow := settings_slow_preflight:  # a pre-flight that takes a while (a large input), and says when it began
        real = batch_runner.runner.shard.preflight

        def slow_preflight(*a, **kw):
            print("fake: pre-flight began", file=sys.stderr, flush=True)
            time.sleep(slow)
            return real(*a, **kw)
        batch_runner.runner.shard.preflight = slow_preflight
    batch_runner.engines.vllm_engine._cache["fake"] = engine  # shut down at exit, as the real engine is
    sys.argv = ["batch-run", *sys.argv[1:]]
    entry()


if __name__ == "__main__":
    main()
