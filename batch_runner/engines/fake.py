"""A fake engine, chosen by ``engine.backend: fake``: the runner's own logic without a model.

It answers deterministically: each request's text names its prompt length, so a test can check that
every row got its own answer. Its behaviour is set in the job file, under ``engine.extra``
(``SETTINGS`` lists the keys); tests that need Python hooks (``stall``, ``reject``, ``on_poll``) or
want to count what was submitted build a ``FakeEngine`` and ``install`` it. It never stands in for
the path a user runs: the end-to-end tests drive vLLM. (datatrove ships its ``DummyServer`` alike.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import EngineSpec, ModelSpec
from ..errors import JobError, RowError
from ..records import Completion, Request, Sample

FAKE_MAX_NUM_SEQS = 64  # scheduled at once unless engine.max_num_seqs says: as vLLM's CPU build does


@dataclass
class FakeEngine:
    max_model_len: int = 2048
    per_poll: int = 3  # requests finished per poll, oldest first
    latency_s: float = 0.0  # sleep per poll
    output_tokens: int = 5
    hold: list[str] = field(default_factory=list)  # key endings (":batch:position") that never finish
    hang_after: int | None = None  # polls after which poll never returns (an engine that stopped answering)
    close_s: float = 0.0  # how long close takes (vLLM's teardown takes seconds)
    start_s: float = 0.0  # how long the start takes (vLLM's takes minutes on a GPU)
    fail_start: str | None = None  # the engine does not start: vLLM's error message (a value it refuses)
    stop_grace_s: float | None = None  # how long a stop waits for the engine (None: the runner's default)
    think: bool = False  # answers as a reasoning model's: "<think>...</think>" before the answer
    # Failures the runner's supervision must survive: after fail_after polls, or once a request whose key
    # ends with one of poison is sent, the engine fails: "death" (its process ends: ``failure`` says so)
    # or "stall" (it lives, and no step ends). Only the first fail_starts starts in a run fail.
    fail_after: int | None = None
    poison: list[str] = field(default_factory=list)
    fail_as: str = "death"
    fail_starts: int = 1
    # Python hooks, for tests (not settable from a job file)
    stall: Callable[[str], bool] | None = None  # requests that never finish (then the engine "dies")
    reject: Callable[[Request], bool] | None = None  # requests refused at submit (error rows)
    on_poll: Callable[[int], None] | None = None  # called with the poll count (e.g. to send a signal)
    on_start: Callable[[], None] | None = None  # called as the start begins (e.g. to send a signal)
    submitted: list[str] = field(default_factory=list)
    polls: int = 0
    starts: int = 0  # in this run: a restart counts on
    failed: str | None = None  # "death" or "stall", once this start's engine failed
    _queue: list[tuple[str, int]] = field(default_factory=list)
    _unread: int | None = None  # queue positions from here on were sent after a poison: never answered

    def start(self, args: dict[str, Any], restart: bool = False) -> FakeEngine:
        """This engine started (afresh: a restart forgets its queue), or the start's failure as vLLM's would read."""
        if self.on_start is not None:
            self.on_start()
        time.sleep(self.start_s)
        if self.fail_start is not None:
            from .vllm_engine import start_failure

            raise start_failure(args, ValueError(self.fail_start))
        self.starts = self.starts + 1 if restart else 1
        self.polls, self.failed, self._queue, self._unread = 0, None, [], None
        return self

    def _may_fail(self) -> bool:
        return self.fail_as in ("death", "stall") and self.starts <= self.fail_starts

    def submit(self, request: Request) -> None:
        if self.reject is not None and self.reject(request):
            raise RowError("engine_rejected", "the fake engine rejects this request")
        self.submitted.append(request.key)
        self._queue.append((request.key, len(request.token_ids)))
        if self.poison and request.key.endswith(tuple(self.poison)) and self._unread is None:
            # whichever start it reaches: a death at once; a stall as vLLM's when a request kills its input
            # thread: what came before it is answered, it and what comes after are never read
            self._unread = len(self._queue) - 1
            if self.fail_as == "death":
                self.failed = "death"

    def unfinished(self) -> int:
        return len(self._queue)

    def poll(self) -> list[Completion]:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self.polls)
        if self.fail_after is not None and self.polls > self.fail_after and self._may_fail():
            self.failed = self.fail_as
        if self.failed or (self.hang_after is not None and self.polls > self.hang_after):
            while True:  # as vLLM's step waits for a dead or wedged engine core: for ever
                time.sleep(1)
        if self.latency_s:
            time.sleep(self.latency_s)
        read = self._queue if self._unread is None else self._queue[:self._unread]
        if self._unread is not None and not read:
            self.failed = self.fail_as  # only the unread are left: no step ends any more
            while True:
                time.sleep(1)
        ready = [q for q in read if not self._stalled(q[0]) and not q[0].endswith(tuple(self.hold))]
        ready = ready[: self.per_poll]
        if not ready and self.hold:  # only held requests are left: they run on, as a long row does
            time.sleep(0.05)
            return []
        if not ready and self._queue:  # only stalled requests are left: the engine "dies"
            raise RuntimeError("fake engine died")
        for q in ready:
            self._queue.remove(q)
        if self._unread is not None:
            self._unread -= len(ready)
        now = time.perf_counter()
        return [Completion(key, [Sample(self._text(n), "stop", self.output_tokens)], n, 0, now, now)
                for key, n in ready]

    def _text(self, n: int) -> str:
        answer = f"answer to {n} tokens"
        return f"<think>thinking about {n} tokens</think>{answer}" if self.think else answer

    def _stalled(self, key: str) -> bool:
        return self.stall is not None and self.stall(key)

    def abort(self, keys: list[str]) -> None:
        self._queue = [q for q in self._queue if q[0] not in set(keys)]

    def reset_prefix_cache(self) -> None:
        pass  # nothing cached

    def failure(self) -> str | None:
        return "fake engine process ended: killed by signal 9 (SIGKILL)" if self.failed == "death" else None

    def kill(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self._queue.clear()
        time.sleep(self.close_s)


_HOOKS = {"stall", "reject", "on_poll", "on_start", "submitted", "polls", "starts", "failed", "_queue", "_unread"}
# engine.extra keys of the fake backend: the engine's settings, and the pre-flight's delay
SETTINGS = tuple(f.name for f in fields(FakeEngine) if f.name not in _HOOKS) + ("slow_preflight_s",)

_installed: FakeEngine | None = None


def install(engine: FakeEngine | None) -> None:
    """Every fake-backend start in this process returns ``engine`` (None: one built from the job's
    settings): for tests that give it Python hooks or count what it was sent."""
    global _installed
    _installed = engine


_last: FakeEngine | None = None  # the engine a restart starts again (its count of starts goes on)


def start(args: dict[str, Any], restart: bool = False) -> FakeEngine:
    """A fake engine for these arguments (``engine_arguments``'), or the installed one; on a restart,
    the one that failed, started again."""
    global _last
    if restart and _last is not None:
        return _last.start(args, restart=True)
    _last = _installed or FakeEngine(**{k: v for k, v in args.items() if k in SETTINGS})
    return _last.start(args)


def batch_of(key: str) -> int:
    """The runner's batch number in a request key (run_id:batch:position)."""
    return int(key.split(":")[1])


def engine_arguments(model_path: str, model: ModelSpec, engine: EngineSpec) -> tuple[dict[str, Any], list[str]]:
    """The fake's arguments: the model, the sequences scheduled at once, and ``engine.extra``'s settings
    (checked here, in the pre-flight, as vLLM's are). ``slow_preflight_s`` makes the pre-flight that
    long (a large input), and says on stderr when it began."""
    unknown = sorted(set(engine.extra) - set(SETTINGS))
    if unknown:
        raise JobError(f"engine.extra.{unknown[0]}: not a setting of the fake engine "
                       f"(its settings: {', '.join(SETTINGS)})")
    extra = dict(engine.extra)
    if slow := extra.pop("slow_preflight_s", 0):
        print("fake: pre-flight began", file=sys.stderr, flush=True)
        time.sleep(slow)
    seqs = engine.max_num_seqs if isinstance(engine.max_num_seqs, int) else FAKE_MAX_NUM_SEQS  # auto: the default
    return {"model": model_path, "max_num_seqs": seqs, **extra}, []
