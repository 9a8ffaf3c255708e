"""SIGTERM/SIGINT during a run: the first asks for a clean stop; a SIGINT after that exits at once.

Schedulers repeat their SIGTERM (scancel retries it while slurmctld is busy; a preemption or a
time limit may send it again), so further SIGTERMs belong to the stop already under way. Only a
SIGINT after a stop began (a person pressing Ctrl-C again) is a clear second request. In a process
of batch-run's own, the rule holds until it exits: a signal while the engine shuts down after the
run ends the process at once with the run's own status, never as a death by signal. ``StopAtOnce``
applies the rule to a command with nothing to save (merge).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ExitStatus, Interrupted

log = logging.getLogger("batch_runner")

STOP_GRACE_S = 60.0  # after a stop request, the longest we wait for the engine before saving and exiting


_owned = False  # this process is batch-run's own (the command line, a node worker), not an embedding program's


def own_process() -> None:
    """Declare the process batch-run's own: a run's stop then covers the rest of its life."""
    global _owned
    _owned = True


def exit_at_once_on_stop(status: int) -> None:
    """The run has ended and its results are saved: from now on, SIGTERM/SIGINT end the process at
    once with ``status`` (the run's own). What is left is the engine's teardown, which may take
    seconds; a repeated stop must not turn a saved run into a death by signal (exit 143)."""
    def handle(signum: int, frame) -> None:
        log.warning("%s received while shutting down; exiting now (status %s)", signal.Signals(signum).name, status)
        os._exit(status)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


class StoppedBeforeRun(BaseException):
    """A stop signal before a run caught the signals itself (the pre-flight: seconds per million
    rows): nothing was written, so nothing to save. A BaseException, as KeyboardInterrupt is, so that
    no ``except Exception`` on its way (a reader's, a template's) takes it for an error of its own."""


def stop_before_run() -> None:
    """In a process of batch-run's own, a stop signal that comes before a run installs its handlers
    ends the process as a stop (75, requeued by the sbatch script), not as a death by signal (143)."""
    def handle(signum: int, frame) -> None:
        raise StoppedBeforeRun(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def restore_handlers(old: dict[int, Any], stopped: bool) -> None:
    """Put back the signal handlers a run replaced. In a process of batch-run's own whose run was
    stopped, the stop covers the rest of the process instead: a repeat exits at once with 75."""
    if _owned and stopped and old:
        exit_at_once_on_stop(int(Interrupted.exit_status))
        return
    for sig, handler in old.items():
        signal.signal(sig, handler)


def is_second_request(signum: int) -> bool:
    """Whether a signal that comes while a stop is under way asks to exit at once: only SIGINT does."""
    return signum == signal.SIGINT


def catch_stop_signals(handler) -> dict[int, Any]:
    """``handler`` for SIGTERM and SIGINT; returns the handlers it replaced (none outside the main
    thread, where an embedding program runs us: no handlers there)."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:
            pass
    return old


def stop_again(signum: int, note: str | None = None) -> None:
    """A signal while a stop is under way: a SIGINT exits at once (ABORTED, 130); a SIGTERM is part of
    the stop."""
    if is_second_request(signum):
        log.warning("second signal, exiting at once (rerun to resume)")
        os._exit(int(ExitStatus.ABORTED))
    if note:
        log.warning(note)


class StopRequest:
    """Catches the stop signals for the length of a run.

    If the engine does not answer within STOP_GRACE_S (it may have been killed by the same
    signal), ``on_timeout`` saves what is finished and ends the process.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.on_timeout = lambda: None
        self.starting = False  # the engine is starting: nothing to save, stop at once
        self.restarting = False  # the same, for a restart after a failure: what finished was saved
        self.grace_s = STOP_GRACE_S
        self._old: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "StopRequest":
        self._old = catch_stop_signals(self._handle)
        return self

    @contextmanager
    def engine_starting(self, restart: bool = False) -> Iterator[None]:
        """While an engine starts (or restarts after a failure), a stop signal ends the run at once."""
        self.starting, self.restarting = True, restart
        try:
            yield
        finally:
            self.starting = self.restarting = False

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            stop_again(signum, "SIGTERM again: already stopping (SIGINT to exit at once)")
            return
        self.requested = signal.Signals(signum).name
        if self.starting:  # a start takes minutes on a GPU; no row runs meanwhile, so stop now
            ran = ("the rows finished before the engine failed were saved" if self.restarting
                   else "nothing ran")
            raise Interrupted(f"{self.requested} received while the engine was starting; {ran}. "
                              "Rerun (or requeue) to resume")
        log.warning("%s received: saving finished rows, then stopping (SIGINT again to exit at once)",
                    self.requested)
        self._timer = threading.Timer(self.grace_s, self.on_timeout)
        self._timer.daemon = True
        self._timer.start()

    def __exit__(self, *exc) -> None:
        if self._timer is not None:  # the run ended in time; an embedding program goes on
            self._timer.cancel()
        restore_handlers(self._old, bool(self.requested))


class StopAtOnce:
    """Catches the stop signals during a command with nothing to save (merge): the first raises
    ``Interrupted(message)`` where the command is, so that its cleanup (``finally``, temporary files)
    runs on the way out; a SIGINT after it exits at once (130), later SIGTERMs are part of the stop.
    """

    def __init__(self, message: str):
        self.message = message
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopAtOnce":
        self._old = catch_stop_signals(self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            stop_again(signum)
            return
        self.requested = signal.Signals(signum).name
        raise Interrupted(f"{self.requested} received: {self.message}")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
