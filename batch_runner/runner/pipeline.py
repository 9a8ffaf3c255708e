"""One shard's rows through the stages: prepare, engine, finish, commit.

The engine gets requests one by one and its queue is topped up while finished batches are
committed, so vLLM never drains between batches. A batch's rows land as one part when its last
row finishes; on a stop, the finished rows of open batches are committed and the rest aborted
(they run again on resume), so every row is committed at most once per run and exactly once overall.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..engines import Engine
from ..engines.reasoning import ReasoningSplitter
from ..engines.watch import EngineLost
from ..errors import BatchRunnerError, EngineError, ExitStatus, RowError, StorageError, os_reason
from ..inputs.readers import InputRow
from ..inputs.template_bounds import RenderStopped
from ..observe.stats import BatchTimes
from ..records import Completion, Request, ResultRow
from .commit import Committer
from .ordering import chunked
from .recovery import Recovery
from .requests import RequestBuilder
from .rows import completed_result, error_result
from .stop import StopRequest

log = logging.getLogger("batch_runner")

HARD_STOP_LOCK_S = 20.0  # how long the stop watchdog waits for a commit under way before exiting without it


@dataclass
class OpenBatch:
    number: int
    rows: list[tuple[str, InputRow]]  # (id, row)
    kept: list[dict]  # each row's kept columns (made storable at commit)
    results: list[ResultRow | None]
    times: BatchTimes
    pending: int = 0
    unwritten: list[int] = field(default_factory=list)  # positions finished and not yet in a part
    stored: list[dict] = field(default_factory=list)  # rows flushed early, as stored (for the stats row)

    def error(self, pos: int, err: RowError) -> None:
        self.done(pos, error_result(self.rows[pos][0], self.number, self.kept[pos], err))

    def done(self, pos: int, result: ResultRow) -> None:
        self.results[pos] = result
        self.unwritten.append(pos)

    def take_unwritten(self) -> list[ResultRow]:
        rows = [self.results[p] for p in self.unwritten]
        self.unwritten = []
        return rows


class Pipeline:
    def __init__(self, builder: RequestBuilder, engine: Engine, committer: Committer, stop: StopRequest,
                 kept_names: list[str], batch_size: int, queue_target: int, flush_s: float,
                 reasoning: ReasoningSplitter | None = None, restart: Callable[[], Engine] | None = None,
                 max_restarts: int = 0, running_max: int = 1 << 30):
        self.builder, self.engine, self.committer, self.stop = builder, engine, committer, stop
        self.restart = restart  # a new engine in place of one that failed (None: a failure ends the run)
        self.recovery = Recovery(max_restarts if restart is not None else 0)
        self.running_max = running_max  # the engine's max_num_seqs: requests sent again go only where they run at once
        self.reasoning = reasoning  # model.reasoning_parser's split of each text
        self.kept_names, self.batch_size, self.queue_target = kept_names, batch_size, queue_target
        self.flush_s = flush_s  # a finished row waits at most this long for its batch before it is committed
        self.waiting_since: float | None = None  # when the oldest finished, uncommitted row finished
        self.open: dict[int, OpenBatch] = {}
        self.in_engine: dict[str, Request] = {}  # submitted, not yet finished
        self.lock = threading.Lock()  # the loop and the stop watchdog never commit at once
        stop.on_timeout = self.hard_stop
        if engine.stop_grace_s is not None:  # the fake backend's setting (tests of the stop watchdog)
            stop.grace_s = engine.stop_grace_s
        builder.renderer.guard.stopping = lambda: stop.requested is not None  # a stop ends a long render

    def run(self, rows: Iterable[tuple[str, InputRow]]) -> None:
        """Run every row; on a stop request, save what finished and return."""
        failing = True  # until the loop ends or stops as it should
        try:
            for number, batch in enumerate(chunked(rows, self.batch_size)):
                if self.stop.requested:
                    break
                try:
                    with self.lock:
                        self.submit(number, batch)
                except RenderStopped:  # none of the batch was submitted: its rows run on resume
                    break
                while self._busy() and not self.stop.requested:
                    self.collect()
            while self.in_engine and not self.stop.requested:
                self.collect()
            failing = False
        except BatchRunnerError:
            raise
        except Exception as e:  # the engine died; a signal may have reached it first
            if not self.stop.requested:
                raise EngineError(f"the engine failed during the run: {type(e).__name__}: {e}\n"
                                  "Finished rows were saved; rerun the job to resume.") from e
            log.warning("the engine stopped with the signal (%s); saving finished rows", type(e).__name__)
            failing = False
        finally:
            with self.lock:
                self.flush_partial(failing)

    def submit(self, number: int, rows: list[tuple[str, InputRow]]) -> None:
        now = time.perf_counter()
        kept = [{name: row.data.get(name) for name in self.kept_names} for _, row in rows]
        batch = OpenBatch(number, rows, kept, [None] * len(rows), BatchTimes(submitted=now))
        self.committer.timeline.begin(now)
        self.open[number] = batch
        for pos, request in enumerate(self.builder.build(number, [row for _, row in rows])):
            if isinstance(request, RowError):
                batch.error(pos, request)
                continue
            try:
                self.engine.submit(request)
            except RowError as e:
                e.prompt_tokens = len(request.token_ids)
                batch.error(pos, e)
                continue
            self.in_engine[request.key] = request
            batch.pending += 1
        if batch.pending == 0:
            self._commit(batch)
        elif batch.unwritten and self.waiting_since is None:  # error rows wait for their batch too
            self.waiting_since = now

    def _busy(self) -> bool:
        """The engine holds enough, or requests sent again after a failure are still going back to it."""
        return self.engine.unfinished() >= self.queue_target or self.recovery.active

    def collect(self) -> None:
        if self.recovery.active:
            self._send_again()
        try:
            completions = self.engine.poll()
        except EngineLost as lost:
            self._recover(lost)
            return
        if self.recovery.active:
            self.recovery.stepped(self.in_engine)
            if not self.recovery.active:
                log.info("the requests in flight at the engine's failure are all back in it; new requests follow")
        with self.lock:
            for c in completions:
                self._finished(c)
            now = time.perf_counter()
            if self.waiting_since is not None and now - self.waiting_since >= self.flush_s:
                self._flush()
            if self.committer.timeline.due(now):
                self.committer.timeline.tick(now, self.engine.unfinished())

    def _finished(self, c: Completion) -> None:
        request = self.in_engine.pop(c.key)
        batch = self.open[request.batch]
        batch.done(request.position, completed_result(batch.rows[request.position][0],
                                                      batch.kept[request.position], request, c, self.reasoning))
        batch.times.saw(c.started_s, c.finished_s)
        if self.waiting_since is None:
            self.waiting_since = time.perf_counter()
        self.committer.timeline.finished(c.output_tokens, c.prompt_tokens, c.cached_prompt_tokens)
        batch.pending -= 1
        if batch.pending == 0:
            self._commit(batch)

    def _recover(self, lost: EngineLost) -> None:
        """The engine failed: save what finished, quarantine what failed it twice, then restart it and
        send the rest again (``recovery``), or end the run once the restarts are spent."""
        if self.stop.requested:  # a stop signal reaches the engine's processes too: not a failure
            raise lost
        with self.lock:
            quarantined = self.recovery.failed(lost.cause, list(self.in_engine))
            for key in quarantined:
                self._quarantine(key)
            if any(b.unwritten for b in self.open.values()):
                self._flush()  # every finished row is saved before the restart
        self.committer.totals.engine_restarts = self.recovery.restarts
        failures = len(self.recovery.failures)
        if self.recovery.exhausted:
            self.engine.kill()
            raise EngineError(f"the engine failed {failures} time{'s' if failures > 1 else ''} in this run, more than "
                              f"engine.max_restarts ({self.recovery.max_restarts}) allows; the last time: {lost.cause}.\n"
                              "Finished rows were saved; rerun the job to resume.") from lost
        log.warning("the engine failed (%s)%s; restarting it (restart %d of at most %d) and sending its %d "
                    "unfinished requests again", lost.cause,
                    f"; {len(quarantined)} requests in flight at this failure and the last were set aside as "
                    "engine_failed rows" if quarantined else "",
                    failures, self.recovery.max_restarts, len(self.in_engine))
        self.engine = self.restart()

    def _quarantine(self, key: str) -> None:
        """A request in flight at two failures in a row: its row becomes an engine_failed error row."""
        request = self.in_engine.pop(key)
        first, last = self.recovery.failures[-2].cause, self.recovery.failures[-1].cause
        error = RowError("engine_failed", f"the engine failed twice in a row with this request in flight ({first}; "
                                          f"then {last}); it was set aside so that the job goes on "
                                          "(--retry-errors runs it again)")
        self._ended_in_error(request, error)

    def _ended_in_error(self, request: Request, error: RowError) -> None:
        """A request taken out of the engine's flight with an error: its row is an error row."""
        error.prompt_tokens = len(request.token_ids)
        batch = self.open[request.batch]
        batch.error(request.position, error)
        batch.pending -= 1
        if batch.pending == 0:
            self._commit(batch)

    def _send_again(self) -> None:
        """The next wave of the requests in flight at the last failure, to the new engine."""
        room = self.engine.unfinished() < self.running_max
        for key in self.recovery.next_wave(self.in_engine, room):
            try:
                self.engine.submit(self.in_engine[key])
            except RowError as e:  # the engine took it before; a new one refusing it is its row's error
                with self.lock:
                    self._ended_in_error(self.in_engine.pop(key), e)

    def _commit(self, batch: OpenBatch) -> None:
        """The batch is done (or the run stops): its unwritten rows as its part, then its stats row."""
        self.open.pop(batch.number, None)
        self.committer.commit(batch.number, batch.take_unwritten(), batch.times, batch.stored)
        if not any(b.unwritten for b in self.open.values()):
            self.waiting_since = None

    def _flush(self) -> None:
        """Finished rows have waited flush_s for their batches: every finished row of the open batches
        goes into one part now, so a crash cannot lose it (the batches' stats rows come when they end)."""
        batches = [b for b in self.open.values() if b.unwritten]
        taken = [(b, r) for b in batches for r in b.take_unwritten()]
        stored = self.committer.flush([r for _, r in taken])
        for (batch, _), row in zip(taken, stored):
            batch.stored.append(row)
        self.waiting_since = None

    def _end(self) -> None:
        try:
            in_engine = self.engine.unfinished()
        except Exception:  # the engine may be gone
            in_engine = 0
        self.committer.end(time.perf_counter(), in_engine)

    def flush_partial(self, failing: bool = False) -> None:
        """Commit the finished rows of open batches; abort the rest (they run again on resume).

        When the run is failing already (a full disk, say), a write that fails here too is only
        logged: the first error is the one to report, and the rows not saved run again on resume.
        """
        try:
            self.engine.abort(list(self.in_engine))
        except Exception:  # the engine may already be gone (signal reached it too)
            log.debug("abort failed", exc_info=True)
        self.in_engine.clear()
        try:
            self._end()
            for batch in list(self.open.values()):
                self._commit(batch)
        except StorageError as e:
            if not failing:
                raise
            log.warning("the finished rows of the open batches were not saved either (%s: %s); they run "
                        "again on resume", e.path, os_reason(e.error))

    def hard_stop(self) -> None:
        """The engine did not answer after a stop request: save finished rows, exit resumable.

        The exit comes whatever happens here: the main thread may hold the lock in a commit that
        hangs (a dead network file system), or the save itself may fail (a full disk); either way
        the rows not saved run again on resume, and a part is never half-written (atomic_write)."""
        said = "finished rows saved"
        try:
            if not self.lock.acquire(timeout=HARD_STOP_LOCK_S):
                said = "finished rows of open batches not saved (a commit did not end); they run on resume"
            else:
                try:
                    self._end()
                    for batch in list(self.open.values()):
                        self._commit(batch)
                finally:
                    self.lock.release()
        except BaseException as e:  # noqa: BLE001 - nothing may keep this thread from exiting
            said = f"finished rows of open batches not saved ({type(e).__name__}: {str(e)[:200]}); they run on resume"
        log.warning("the engine did not stop in time; %s; exiting (rerun to resume)", said)
        os._exit(int(ExitStatus.INTERRUPTED))
