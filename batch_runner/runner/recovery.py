"""After the engine fails: how many restarts are left, which requests go back and when, which are quarantined.

A failure (the engine's process died, or no step ended for ``engine.stall_timeout_s``) costs one restart,
up to ``engine.max_restarts`` in a run. The requests in flight at the failure go back to the new engine
first and alone, on probation: oldest first, in waves of 1, 1, 2, 4, ... at most ``MAX_WAVE``, the next
wave only once the engine has ended ``PROBATION_STEPS`` steps since the last went in. A failure while a
wave is on probation quarantines that wave: its requests were in flight at two failures in a row, and
their rows become ``engine_failed`` error rows (``--retry-errors`` runs them again on purpose).

So a request that kills or wedges the engine when it arrives (a poison row) costs two restarts and takes
at most ``MAX_WAVE - 1`` others with it; after a stall it is the oldest request in flight (everything sent
before it finished, everything after it was never read), so it goes back alone and goes alone. An engine
killed twice from outside (the OOM killer) quarantines nothing once its probation has passed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..records import EngineFailure

MAX_WAVE = 16  # requests on probation at once: the most a poison row takes with it
PROBATION_STEPS = 4  # engine steps a wave must see end (read, scheduled, its prefill begun by then)


@dataclass
class Recovery:
    """The run's failures, and the probation of the requests sent again."""

    max_restarts: int
    failures: list[EngineFailure] = field(default_factory=list)
    waiting: deque[str] = field(default_factory=deque)  # keys to send again, oldest first
    on_probation: list[str] = field(default_factory=list)  # the last wave sent, until it has seen its steps
    steps: int = 0  # steps ended since that wave went in
    waves: int = 0  # waves sent since the last failure

    @property
    def restarts(self) -> int:
        """Restarts made so far: one per failure, but the one past the budget (it ends the run)."""
        return min(len(self.failures), self.max_restarts)

    @property
    def exhausted(self) -> bool:
        return len(self.failures) > self.max_restarts

    @property
    def active(self) -> bool:
        """Requests are still going back on probation: hold new requests back until they are in."""
        return bool(self.waiting or self.on_probation)

    def failed(self, cause: str, in_flight: list[str]) -> list[str]:
        """Record a failure with these keys in flight (oldest first); the keys to quarantine. The rest go
        back on probation (``next_wave``)."""
        suspects = set(self.on_probation)
        quarantined = [k for k in in_flight if k in suspects]
        self.failures.append(EngineFailure(cause, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                           len(in_flight), len(quarantined)))
        self.waiting = deque(k for k in in_flight if k not in suspects)
        self.on_probation, self.steps, self.waves = [], 0, 0
        return quarantined

    def stepped(self, in_flight: dict) -> None:
        """The engine ended a step; ``in_flight``: the keys it still holds. A wave passes after its steps,
        or once none of it is left (an idle engine would end no more steps)."""
        if self.on_probation:
            self.steps += 1
            if self.steps >= PROBATION_STEPS or not any(k in in_flight for k in self.on_probation):
                self.on_probation = []

    def next_wave(self, still_in_flight: dict, room: bool = True) -> list[str]:
        """The keys to send now: the next wave once the last has passed and the engine has ``room`` to run
        it at once (a wave left waiting in its queue would pass unscheduled); else none. Keys that left
        the flight meanwhile (aborted by a stop) are skipped."""
        if self.on_probation or not self.waiting or not room:
            return []
        size = min(2 ** max(self.waves - 1, 0), MAX_WAVE)  # 1, 1, 2, 4, ... MAX_WAVE
        wave = []
        while self.waiting and len(wave) < size:
            key = self.waiting.popleft()
            if key in still_in_flight:
                wave.append(key)
        self.on_probation, self.steps, self.waves = wave, 0, self.waves + 1
        return wave
