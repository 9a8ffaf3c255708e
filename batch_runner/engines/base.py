"""The engine protocol: what the runner needs of an engine, over plain values (``records``)."""

from __future__ import annotations

from typing import Protocol

from ..records import Completion, Request


class Engine(Protocol):
    """What the runner needs of an engine (``VllmEngine``, ``FakeEngine``)."""

    max_model_len: int
    stop_grace_s: float | None  # how long a stop waits for this engine; None: the runner's default

    def submit(self, request: Request) -> None:
        """Queue one request; ``RowError`` if the engine rejects it (the row gets an error result)."""

    def unfinished(self) -> int:
        """Requests submitted and not yet returned by ``poll`` (nor aborted)."""

    def poll(self) -> list[Completion]:
        """Advance the engine one step; the requests that finished in it."""

    def abort(self, keys: list[str]) -> None: ...

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (planning's trials must not flatter each other)."""

    def failure(self) -> str | None:
        """Why the engine can answer no more (its process died), else None; cheap, called every half second."""

    def kill(self) -> None:
        """End a failed engine's processes at once (no orderly shutdown: it may hang on a dead peer)."""

    def close(self) -> None: ...
