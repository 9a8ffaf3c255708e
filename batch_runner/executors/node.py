"""The one-node executor (``executor.data_parallel``): several engines, one GPU (or tensor-parallel
group) each, each running the shard runner on its own shard.

The library starts the workers itself (``multiprocessing`` with spawn, so each worker imports CUDA
fresh with its own ``CUDA_VISIBLE_DEVICES``); each worker is an ordinary shard run that commits and
resumes on its own. The parent checks the job and reads the input once (``prepare_shards``), sends
the workers the job, their shard and its input report (so that they do not read the input again
before they run it), hears their progress events and summaries on a queue, forwards stop signals,
and names the shard of a worker that dies.

Under a Slurm array of N tasks, task I with D engines runs shards I*D .. I*D+D-1 of N*D.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..config import JobSpec
from ..engines import reaper
from ..engines.gpu import visible_devices
from ..engines.mainscript import children_skip_main
from ..errors import BatchRunnerError, ExitStatus, JobError
from ..inputs.assignment import Shard
from ..inputs.preflight import ShardInput
from ..observe.progress import Progress, say
from ..records import ProgressEvent, Summary
from ..runner.shard import RunOptions
from ..runner.stop import exit_at_once_on_stop, is_second_request, own_process
from .base import Execution, Executor, combined_status, prepare_shards, run_here, with_shard

log = logging.getLogger("batch_runner")


@dataclass
class Worker:
    shard: Shard
    devices: list[str] | None  # CUDA_VISIBLE_DEVICES for it; None on a machine without GPUs
    proc: Any = None  # its multiprocessing.Process
    rows_total: int = 0
    rows_done: int = 0
    output_tok_s: float = 0.0  # its run's pace, as its progress events report it
    summary: Summary | None = None

    @property
    def where(self) -> str:
        return f"GPU {','.join(self.devices)}" if self.devices else "CPU"


def plan(data_parallel: int | str, tensor_parallel_size: int | str, shard: Shard,
         devices: list[str]) -> tuple[list[Worker], int]:
    """The workers for this task, and each one's tensor_parallel_size.

    ``auto`` data_parallel fills the visible GPUs; ``auto`` tensor_parallel_size splits them evenly.
    """
    tp, dp = tensor_parallel_size, data_parallel
    if dp == "auto":
        dp = max(1, len(devices) // (tp if isinstance(tp, int) else 1))
    if tp == "auto":
        tp = max(1, len(devices) // dp)
    if devices and dp * tp > len(devices):
        raise JobError(f"executor.data_parallel: {dp} engines x tensor_parallel_size {tp} need {dp * tp} GPUs, "
                       f"but {len(devices)} are visible ({','.join(devices)})")
    count = shard.count * dp
    workers = [Worker(Shard(shard.index * dp + j, count), devices[j * tp:(j + 1) * tp] if devices else None)
               for j in range(dp)]
    return workers, tp


class NodeExecutor(Executor):
    """``executor.data_parallel`` engines on this node, each on its own shard of this task's."""

    name = "node"

    def run(self, job: JobSpec, options: RunOptions) -> Execution:
        options = with_shard(options, self.shard)
        if options.dry_run:
            return run_here(job, options)
        workers, tp = plan(job.executor.data_parallel, job.engine.tensor_parallel_size, options.shard,
                           visible_devices(self.env))
        if len(workers) == 1:
            return run_here(job, options)
        job = job.model_copy(update={
            "engine": job.engine.model_copy(update={"tensor_parallel_size": tp}),
            "executor": job.executor.model_copy(update={"data_parallel": len(workers)})})
        inputs = prepare_shards(job, options, [w.shard for w in workers])
        node = Workers(workers, Progress(job.output.log_format, job.name))
        node.start(job, options.retry_errors, self.verbose, inputs)
        codes = node.wait()
        return Execution(combined_status(codes), [w.summary for w in workers if w.summary], len(workers))


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def worker_main(job_json: str, shard: Shard, devices: list[str] | None, retry_errors: bool, verbose: bool,
                events, given: ShardInput | None = None) -> None:
    """A worker process: its GPUs, its shard, the shard runner; progress and summary to the parent."""
    os.setsid()  # a Ctrl-C on the terminal reaches the parent only, which forwards it once
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # before anything imports CUDA
    from ..engines import shutdown_engines
    from ..logs import setup_logging
    from ..runner.shard import run_shard

    own_process()
    setup_logging(verbose, prefix=f"[{shard.label}] ")
    code = int(ExitStatus.FAILED)
    try:
        job = JobSpec.model_validate_json(job_json)
        result = run_shard(job, RunOptions(retry_errors=retry_errors, shard=shard, progress=False,
                                           listeners=[events.put], given=given))
        events.put(result.summary)
        code = int(result.status)
    except BatchRunnerError as e:
        say(f"[{shard.label}] error: {e}")
        code = int(e.exit_status)
    finally:
        events.close()
        events.join_thread()  # the queue's feeder thread has handed everything over
        exit_at_once_on_stop(code)  # a stop during the engine's teardown ends with this status
        shutdown_engines()
        sys.stderr.flush()
        os._exit(code)


class Workers:
    """Runs ``workers`` side by side on this node, in processes of their own; combined progress."""

    def __init__(self, workers: list[Worker], progress: Progress):
        self.workers, self.progress = workers, progress
        self.signals = 0
        self.mp = multiprocessing.get_context("spawn")
        self.events = self.mp.Queue()

    def start(self, job: JobSpec, retry_errors: bool, verbose: bool, inputs: list[ShardInput]) -> None:
        reaper.guard()  # workers (and their engines) must not outlive this parent, however it ends
        job_json = job.model_dump_json()
        for w, given in zip(self.workers, inputs):
            w.proc = self.mp.Process(target=worker_main, name=f"batch-run {w.shard.label}",
                                     args=(job_json, w.shard, w.devices, retry_errors, verbose, self.events, given))
            with children_skip_main():  # a worker must not run the user's script (run() in it) again
                w.proc.start()
            say(f"shard {w.shard.label} on {w.where}: worker pid {w.proc.pid}")

    def _forward(self, signum: int, frame) -> None:
        """The first signal reaches the workers as SIGTERM, later ones as they came: the workers apply
        the stop rule (stop.py), so repeated SIGTERMs stay one stop and a SIGINT after it exits at once."""
        self.signals += 1
        at_once = self.signals > 1 and is_second_request(signum)
        say(f"{signal.Signals(signum).name} received: passing it to the workers"
             + (" (again: they exit at once)" if at_once else ""))
        for w in self.workers:
            if w.proc.is_alive():
                os.kill(w.proc.pid, signum if self.signals > 1 else signal.SIGTERM)

    def wait(self) -> list[int]:
        """Until every worker has ended: their events as they come; returns their exit codes."""
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while any(w.proc.is_alive() for w in self.workers):
                self._drain(timeout=1.0)  # wakes up for signal handlers too
            time.sleep(0.2)
            self._drain(timeout=0)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        codes = [w.proc.exitcode for w in self.workers]
        for w, code in zip(self.workers, codes):
            if code not in (ExitStatus.OK, ExitStatus.ROW_ERRORS):
                say(f"worker of shard {w.shard.label} on {w.where} {describe_exit(code)}; its finished "
                     "rows are saved: rerun the job to resume it")
        return codes

    def _drain(self, timeout: float) -> None:
        try:
            item = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._on_item(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def _on_item(self, item: ProgressEvent | Summary) -> None:
        w = next((x for x in self.workers if x.shard.label == item.shard), None)
        if w is None:
            return
        if isinstance(item, Summary):
            w.summary = item
        elif item.kind == "start":
            w.rows_total = item.rows_total
        elif item.kind == "batch":
            w.rows_done, w.output_tok_s = item.rows_done, item.output_tok_s
            self._progress(w, item)

    def _progress(self, w: Worker, event: ProgressEvent) -> None:
        done = sum(x.rows_done for x in self.workers)
        total = sum(x.rows_total for x in self.workers)
        tok_s = sum(x.output_tok_s for x in self.workers)  # the engines run side by side: their paces add up
        self.progress.engines(w.shard.label, event.batch, done, total, len(self.workers), tok_s)
