"""``engine.data_parallel``: several engines on one node, one GPU (or tensor-parallel group) each.

The parent starts one ``batch-run run`` process per engine, pins it to its GPUs with
``CUDA_VISIBLE_DEVICES`` and gives it its own shard, so each worker is an ordinary shard run that
commits and resumes on its own. The parent reads the workers' JSON progress lines into one
combined progress, forwards stop signals, and names the shard of a worker that dies.

Under a Slurm array of N tasks, task I with D engines runs shards I*D .. I*D+D-1 of N*D.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import reaper
from .config import EngineSpec
from .errors import ExitStatus, JobError
from .gpu import visible_devices
from .sharding import Shard

WORKER_ENV = "BATCH_RUN_WORKER"  # set in workers: run the given shard, never start workers again


@dataclass
class Worker:
    shard: Shard
    devices: list[str] | None  # CUDA_VISIBLE_DEVICES for it; None on a machine without GPUs
    proc: subprocess.Popen | None = None
    rows_total: int | None = None
    rows_done: int = 0
    output_tokens: int = 0
    output_tok_s: float = 0.0  # its run's pace, as its progress lines report it

    @property
    def where(self) -> str:
        return f"GPU {','.join(self.devices)}" if self.devices else "CPU"


def plan(engine: EngineSpec, shard: Shard, devices: list[str]) -> tuple[list[Worker], int]:
    """The workers for this task, and each one's tensor_parallel_size.

    ``auto`` data_parallel fills the visible GPUs; ``auto`` tensor_parallel_size splits them evenly.
    """
    tp = engine.tensor_parallel_size
    dp = engine.data_parallel
    if dp == "auto":
        dp = max(1, len(devices) // (tp if isinstance(tp, int) else 1))
    if tp == "auto":
        tp = max(1, len(devices) // dp)
    if devices and dp * tp > len(devices):
        raise JobError(f"engine.data_parallel: {dp} engines x tensor_parallel_size {tp} need {dp * tp} GPUs, "
                       f"but {len(devices)} are visible ({','.join(devices)})")
    count = shard.count * dp
    workers = [Worker(Shard(shard.index * dp + j, count), devices[j * tp:(j + 1) * tp] if devices else None)
               for j in range(dp)]
    return workers, tp


# Worst first: the parent's exit status is that of its worst worker.
_SEVERITY = [ExitStatus.FAILED, ExitStatus.USAGE, ExitStatus.INTERRUPTED, ExitStatus.ROW_ERRORS, ExitStatus.OK]


def combined_status(codes: list[int]) -> ExitStatus:
    statuses = [ExitStatus(c) if c in ExitStatus._value2member_map_ else ExitStatus.FAILED for c in codes]
    return min(statuses, key=_SEVERITY.index)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Launcher:
    """Starts the workers, merges their progress, waits for them."""

    def __init__(self, workers: list[Worker], argv: list[str], log_format: str, out: Path):
        self.workers, self.argv, self.log_format, self.out = workers, argv, log_format, out
        self.lines: queue.Queue[tuple[Worker, str | None]] = queue.Queue()
        self.signals = 0
        self.started = time.perf_counter()

    def _env(self, w: Worker) -> dict[str, str]:
        env = {**os.environ, WORKER_ENV: "1", "PYTHONUNBUFFERED": "1"}
        if w.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(w.devices)
        return env

    def start(self) -> None:
        reaper.guard()  # workers (and their engines) must not outlive this parent, however it ends
        for w in self.workers:
            cmd = [sys.executable, "-m", "batch_runner.cli", *self.argv, "--shard", f"{w.shard.index}/{w.shard.count}"]
            # A session of its own: a Ctrl-C on the terminal reaches the parent only, which forwards
            # it once (two would make a worker exit at once instead of saving).
            w.proc = subprocess.Popen(cmd, env=self._env(w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, errors="replace", start_new_session=True)
            threading.Thread(target=self._read, args=(w,), daemon=True).start()
            self._say(f"shard {w.shard.label} on {w.where}: worker pid {w.proc.pid}")

    def _read(self, w: Worker) -> None:
        for line in w.proc.stderr:
            self.lines.put((w, line.rstrip("\n")))
        self.lines.put((w, None))

    def _say(self, text: str) -> None:
        print(f"batch-run: {text}", file=sys.stderr, flush=True)

    def _forward(self, signum: int, frame) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        self._say(f"{name} received: passing it to the workers" + (" (again: they exit at once)" if self.signals > 1 else ""))
        for w in self.workers:
            if w.proc and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)

    def _on_line(self, w: Worker, line: str) -> None:
        event = _json_event(line)
        if event is None:
            print(f"[{w.shard.label}] {line}", file=sys.stderr, flush=True)
        elif event.get("event") == "start":
            w.rows_total = event["rows_total"]
        elif event.get("event") == "batch":
            w.rows_done, w.output_tokens = event["rows_done"], w.output_tokens + event["output_tokens"]
            w.output_tok_s = event["output_tok_s"]
            self._progress(w, event)

    def _progress(self, w: Worker, event: dict[str, Any]) -> None:
        done = sum(x.rows_done for x in self.workers)
        total = sum(x.rows_total or 0 for x in self.workers)
        tok_s = sum(x.output_tok_s for x in self.workers)  # the engines run side by side: their paces add up
        fields = {"event": "data_parallel", "shard": w.shard.label, "batch": event["batch"], "rows_done": done,
                  "rows_total": total, "workers": len(self.workers), "output_tok_s": round(tok_s, 1)}
        if self.log_format == "json":
            print(json.dumps(fields), file=sys.stderr, flush=True)
        else:
            self._say(f"{done}/{total} rows over {len(self.workers)} engines (shard {w.shard.label} batch "
                      f"{event['batch']}), {tok_s:,.0f} output tok/s")

    def wait(self) -> list[int]:
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            open_streams = len(self.workers)
            while open_streams:
                try:
                    w, line = self.lines.get(timeout=1.0)  # wakes up for signal handlers too
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                else:
                    self._on_line(w, line)
            codes = [w.proc.wait() for w in self.workers]
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        for w, code in zip(self.workers, codes):
            if code not in (ExitStatus.OK, ExitStatus.ROW_ERRORS):
                self._say(f"worker of shard {w.shard.label} on {w.where} {describe_exit(code)}; its finished "
                          "rows are saved: rerun the job to resume it")
        return codes


def _json_event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def summaries(out: Path, workers: list[Worker]) -> list[dict[str, Any]]:
    """The summaries the workers wrote (a worker that died early wrote none)."""
    found = []
    for w in workers:
        path = out / f"summary-{w.shard.label}.json"
        if path.exists():
            found.append(json.loads(path.read_text()))
    return found


@dataclass
class Combined:
    """Totals over the workers' summaries, for the parent's closing table."""

    engines: int = 0
    shards: list[str] = field(default_factory=list)
    rows: int = 0
    shard_rows: int = 0
    errors: int = 0
    output_tokens: int = 0
    output_tok_s: float = 0.0

    @classmethod
    def of(cls, found: list[dict[str, Any]]) -> "Combined":
        c = cls()
        for s in found:
            c.shards.append(f"{s['shard']} {s['status']}")
            c.rows += s["output"]["rows"]
            c.shard_rows += s["shard_rows"]
            c.errors += s["output"]["errors"]
            c.output_tokens += s["this_run"]["output_tokens"]
            c.output_tok_s += s["this_run"]["output_tok_s"]  # the engines run side by side
        return c


def run_parallel(job, job_file: str, overrides: list[str], shard: Shard, fresh: bool, retry_errors: bool,
                 verbose: bool) -> tuple[ExitStatus, Combined] | None:
    """Run this task's shards on several engines; None when the plan has one engine (run in-process)."""
    from . import checkpoint
    from .config import load_job
    from .runner import RunOptions, check_output_writable, fingerprint, run_job

    workers, tp = plan(job.engine, shard, visible_devices(os.environ))
    if len(workers) == 1:
        return None
    out = job.output_dir
    check_output_writable(out)
    # Validate the job and the whole input once, and convert an embedded model once, before any engine.
    report = run_job(job, RunOptions(dry_run=True, dry_run_rows=0, shard=shard)).summary["report"]
    sets = [*overrides, f"engine.data_parallel={len(workers)}", f"engine.tensor_parallel_size={tp}",
            "output.log_format=json"]
    # The job exactly as the workers will see it: a changed job fails here once, not once per worker.
    worker_job = load_job(job_file, sets)
    wanted = fingerprint(worker_job, workers[0].shard)
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        _move_aside(out, workers, wanted)
    checkpoint.check_fingerprint(out, wanted, json.loads(worker_job.model_dump_json()), report.kept_schema)
    argv = ["run", job_file, *[a for o in sets for a in ("--set", o)],
            *(["--retry-errors"] if retry_errors else []), *(["--verbose"] if verbose else [])]
    launcher = Launcher(workers, argv, job.output.log_format, out)
    launcher.start()
    codes = launcher.wait()
    combined = Combined.of(summaries(out, workers))
    combined.engines = len(workers)
    return combined_status(codes), combined


def _move_aside(out: Path, workers: list[Worker], fingerprint: dict[str, Any]) -> None:
    """--fresh for all workers at once, under all their locks (a worker must not do it: they would race)."""
    from . import checkpoint

    locks = [checkpoint.OutputLock(out, w.shard.label) for w in workers]
    try:
        for lock in locks:
            lock.acquire()
        if moved := checkpoint.move_aside(out, {w.shard.label for w in workers}, fingerprint):
            print(f"batch-run: moved the old results to {moved}", file=sys.stderr, flush=True)
    finally:
        for lock in locks:
            lock.release()
