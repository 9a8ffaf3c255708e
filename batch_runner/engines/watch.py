"""An engine watched: a step that never ends is seen, instead of waited on for ever.

vLLM's offline engine waits for its core's output without a bound: when the core process dies (the OOM
killer, a driver fault) or wedges (a request that kills its input thread), ``LLM.step`` never returns.
``WatchedEngine`` runs each step in a thread of its own and waits for it in short slices, asking the
engine between them whether its process still runs; it raises ``EngineLost`` when the process died
(seen within ``CHECK_S``) or when no step ended for ``stall_timeout_s`` with requests in flight. The
runner then restarts the engine (``runner.recovery``). The step left waiting is abandoned: its thread
is a daemon, and the failed engine's processes are killed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..errors import RowError
from ..records import Completion, Request
from .base import Engine

CHECK_S = 0.5  # how often a step under way is checked on: an engine process's death is seen this soon


class EngineLost(Exception):
    """The engine can answer no more: its process died, its step failed, or it made no progress."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class _Stepper:
    """One daemon thread that runs the engine's steps, one at a time; a step that never returns keeps
    only this thread (a daemon: it does not hold the process's exit)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="batch-run-engine-step", daemon=True).start()

    def call(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._calls.put((fn, future))
        return future

    def _run(self) -> None:
        while True:
            fn, future = self._calls.get()
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(e)


class WatchedEngine:
    """``engine`` behind the same protocol, its ``poll`` bounded (see the module docstring)."""

    def __init__(self, engine: Engine, stall_timeout_s: float, check_s: float = CHECK_S):
        self.inner, self.stall_timeout_s, self.check_s = engine, stall_timeout_s, check_s
        self.max_model_len, self.stop_grace_s = engine.max_model_len, engine.stop_grace_s
        self._stepper = _Stepper()
        self.lost: EngineLost | None = None  # found dead outside a step

    def poll(self) -> list[Completion]:
        """The inner engine's step, or ``EngineLost`` when its process dies or it makes no progress."""
        if self.lost is not None:
            raise self.lost
        step = self._stepper.call(self.inner.poll)
        began = time.monotonic()
        while True:
            try:
                return step.result(timeout=self.check_s)
            except FutureTimeout:  # (the built-in TimeoutError only from Python 3.11 on)
                pass
            except Exception as e:  # vLLM's EngineDeadError and the like: the engine is gone
                raise EngineLost(f"the engine's step failed: {type(e).__name__}: {str(e)[:300]}") from e
            cause = self.inner.failure()
            if cause is not None:
                raise EngineLost(cause)
            waited = time.monotonic() - began
            if waited >= self.stall_timeout_s and self.inner.unfinished() > 0:
                raise EngineLost(f"no engine step ended in {waited:.0f} s with {self.inner.unfinished()} requests "
                                 f"in flight (engine.stall_timeout_s {self.stall_timeout_s:g})")

    def submit(self, request: Request) -> None:
        """Queue a request; once the engine is found dead here (vLLM refuses requests then), the request
        counts as sent: the next ``poll`` raises ``EngineLost``, and the runner sends it again after the restart."""
        if self.lost is not None:
            return
        try:
            self.inner.submit(request)
        except RowError:
            raise
        except Exception as e:  # vLLM's EngineDeadError: the core process is gone
            self.lost = EngineLost(self.inner.failure() or f"the engine refused a request: {type(e).__name__}: "
                                                            f"{str(e)[:300]}")

    def unfinished(self) -> int:
        return self.inner.unfinished()

    def abort(self, keys: list[str]) -> None:
        if self.lost is None:
            self.inner.abort(keys)

    def counters(self):
        counters = getattr(self.inner, "counters", None)
        return counters() if counters is not None else None

    def reset_prefix_cache(self) -> None:
        self.inner.reset_prefix_cache()

    def failure(self) -> str | None:
        return self.inner.failure()

    def kill(self) -> None:
        self.inner.kill()

    def close(self) -> None:
        self.inner.close()
