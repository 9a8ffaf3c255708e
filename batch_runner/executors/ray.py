"""The Ray executor: a job's shards as Ray tasks on an existing Ray cluster.

Each task is the shard runner on one shard, with the GPUs its engine needs (tensor_parallel_size);
Ray places the tasks and, when a worker is lost (node gone, process killed), runs the task again,
and the new run resumes from the shard's committed parts like any rerun. The output folder must be
on storage every node sees. Combined progress comes from the committed parts themselves, so it
stays right across retries. Ray is an optional extra (``pip install 'batch-runner[ray]'``).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import JobSpec
from ..errors import ExitStatus, JobError, ResumeConflict
from ..inputs.assignment import ALL, Shard
from ..inputs.preflight import ShardInput
from ..observe.progress import Progress, say
from ..output.parts import committed_parts
from ..records import Summary
from ..runner.shard import RunOptions
from ..runner.stop import STOP_GRACE_S, StopRequest
from ..storage import is_url
from .base import Execution, Executor, combined_status, prepare_shards, run_here, with_shard

log = logging.getLogger("batch_runner")

LOCK_WAIT_S = 60.0  # a retried task may start before the lost worker's engine has let go of the lock
PROGRESS_EVERY_S = 10.0
STOP_WAIT_S = STOP_GRACE_S + 30.0  # after a stop: the shards' own grace to save their rows, and a margin
CONNECT_S = 5.0  # a cluster address that does not answer a TCP connection in this long is not a cluster


def _import_ray():
    try:
        import ray
    except ImportError:
        raise JobError("executor.kind ray: Ray is not installed here; install the extra "
                       "(pip install 'batch-runner[ray]'), or choose another executor") from None
    return ray


class AttemptCounter:
    """Runs of each shard's task, kept by a Ray actor of the driver's job. Ray retries a task killed
    by its memory monitor without bound (``task_oom_retries``, a setting of the cluster that a driver
    joining it cannot change), so every run, a retry after a lost worker or an OOM kill alike, is
    counted here and the task itself gives up after ``executor.max_retries`` retries."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def next(self, label: str) -> int:
        self.runs[label] = self.runs.get(label, 0) + 1
        return self.runs[label]


def shard_task(job_json: str, shard: Shard, retry_errors: bool, attempts: Any = None,
               max_retries: int = 0, given: ShardInput | None = None) -> tuple[int, dict[str, Any] | None, str]:
    """A Ray task: the shard runner on one shard. Returns (exit status, summary, error message)."""
    from ..engines import shutdown_engines
    from ..errors import BatchRunnerError
    from ..logs import setup_logging
    from ..runner.shard import run_shard

    setup_logging(False, f"[{shard.label}] ")  # the task's messages as a node worker's: prefixed, on stderr
    if attempts is not None:
        import ray

        run = ray.get(attempts.next.remote(shard.label), timeout=60)
        if run > max_retries + 1:
            return int(ExitStatus.FAILED), None, (
                f"its task was lost on each of {run - 1} run(s) (a node or worker gone, or killed by Ray's memory "
                f"monitor); gave up after executor.max_retries={max_retries} retries. Its finished rows are "
                "saved: rerun the job to resume it")
    job = JobSpec.model_validate_json(job_json)
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        while True:
            try:
                result = run_shard(job, RunOptions(shard=shard, retry_errors=retry_errors, progress=False,
                                                   given=given))
                return int(result.status), result.summary.as_dict() if result.summary else None, ""
            except ResumeConflict:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2.0)
    except BatchRunnerError as e:
        return int(e.exit_status), None, str(e)
    finally:
        shutdown_engines()  # the worker process lives on: give the GPU back now


def shard_count(ray, job: JobSpec) -> int:
    if job.executor.shards != "auto":
        return job.executor.shards
    tp = job.engine.tensor_parallel_size if isinstance(job.engine.tensor_parallel_size, int) else 1
    return max(1, int(ray.cluster_resources().get("GPU", 0)) // tp)


class RayExecutor(Executor):
    """Shards as Ray tasks; a dry run previews this task's shard in this process."""

    name = "ray"

    def run(self, job: JobSpec, options: RunOptions) -> Execution:
        if options.dry_run:
            return run_here(job, with_shard(options, self.shard))
        return run_on_ray(job, options, self.verbose)


def run_on_ray(job: JobSpec, options: RunOptions, verbose: bool) -> Execution:
    ray = _import_ray()
    job = _absolute_paths(job)
    _check_reachable(job.executor.ray_address)
    try:
        ray.init(address=job.executor.ray_address, log_to_driver=verbose, logging_level=logging.WARNING)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... when no cluster answers
        raise JobError(f"executor.ray_address: cannot join the Ray cluster at {job.executor.ray_address!r}: "
                       f"{type(e).__name__}: {e}") from e
    try:
        count = shard_count(ray, job)
        shards = [Shard(i, count) for i in range(count)]
        inputs = prepare_shards(job, replace(options, shard=ALL), shards)
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        tp = job.engine.tensor_parallel_size if isinstance(job.engine.tensor_parallel_size, int) else 1
        # Ray retries without bound (max_retries -1); AttemptCounter bounds every kind of retry alike
        task = ray.remote(shard_task).options(num_cpus=1, num_gpus=tp if gpus else 0, max_retries=-1,
                                             name="batch-run-shard")
        attempts = ray.remote(num_cpus=0)(AttemptCounter).remote()
        job_json = job.model_dump_json()
        before = {s.label: _summary_run(job.output_dir, s) for s in shards}
        refs = {task.remote(job_json, s, options.retry_errors, attempts, job.executor.max_retries, given): s
                for s, given in zip(shards, inputs)}
        say(f"{count} shards as Ray tasks on {job.executor.ray_address}")
        codes, summaries = _wait(ray, refs, job.output_dir, before, Progress(job.output.log_format, job.name))
        return Execution(combined_status(codes), summaries, len(shards))
    finally:
        ray.shutdown()


def _absolute_paths(job: JobSpec) -> JobSpec:
    """The job with its input and output paths made absolute: the tasks run in other folders."""
    update = {"output": job.output.model_copy(update={"dir": str(job.output_dir.resolve())})}
    if job.input.path is not None and not is_url(job.input.path) and not Path(job.input.path).is_absolute():
        update["input"] = job.input.model_copy(update={"path": str(Path(job.input.path).resolve())})
    return job.model_copy(update=update)


def _check_reachable(address: str) -> None:
    """Fail in one line when nothing listens at the cluster's address: ray.init would retry for
    minutes, printing Ray's own warnings."""
    target = address
    if address == "auto":
        try:  # where Ray itself would look (RAY_ADDRESS, the node's current cluster); None: Ray says so
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or ""
        except Exception:
            return
    host, _, port = target.rpartition(":")
    if "://" in target or not host or not port.isdigit():
        return  # ray:// (Ray Client) and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_S).close()
    except OSError as e:
        raise JobError(f"executor.ray_address: no Ray cluster answers at {target}"
                       f"{f' (from {address!r})' if target != address else ''}: {e.strerror or e}; start one "
                       "(ray start --head) or give the address of a running one") from None


def _wait(ray, refs: dict, out: Path, before: dict[str, str | None],
          progress: Progress) -> tuple[list[int], list[Summary]]:
    """Each task's outcome; combined progress meanwhile. A stop signal (repeated SIGTERMs are one)
    asks every task to stop: Ray interrupts it with SIGINT, and the shard runner saves its finished
    rows and ends 75. They get STOP_WAIT_S; a stopped shard's outcome is then its own summary."""
    codes, summaries, pending = [], [], list(refs)
    seen: dict[Path, int] = {}
    last, deadline = 0.0, None
    with StopRequest() as stop:
        stop.on_timeout = lambda: None  # the deadline below bounds the wait
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                code, summary = _outcome(ray, ref, refs[ref], out, before, bool(stop.requested))
                codes.append(code)
                if summary:
                    summaries.append(summary)
            if stop.requested and deadline is None:
                for ref in pending:
                    ray.cancel(ref)
                deadline = time.monotonic() + STOP_WAIT_S
            elif deadline is not None and time.monotonic() > deadline and pending:
                say(f"{len(pending)} shard(s) did not stop within {STOP_WAIT_S:.0f} s; ending them")
                for ref in pending:
                    ray.cancel(ref, force=True)
                deadline = float("inf")  # their outcomes come as cancelled
            if time.monotonic() - last > PROGRESS_EVERY_S:
                last = time.monotonic()
                progress.committed(_committed_rows(out, seen), len(pending), len(refs))
    return codes, summaries


def _outcome(ray, ref, shard: Shard, out: Path, before: dict[str, str | None],
             stopping: bool) -> tuple[int, Summary | None]:
    try:
        code, summary, error = ray.get(ref)  # the summary as a dict: what a task returns crosses processes
    except Exception as e:
        if stopping:  # cancelled (or ended by force after STOP_WAIT_S): its own summary says how it ended
            return _stopped(shard, out, before)  # a task that failed for good: the shard's finished rows are saved
        say(f"shard {shard.label} failed on Ray ({type(e).__name__}); its finished rows are saved: "
            "rerun the job to resume it")
        return int(ExitStatus.FAILED), None
    if error:
        say(f"[{shard.label}] error: {error}")
    return code, Summary.from_dict(summary) if summary else None


def _stopped(shard: Shard, out: Path, before: dict[str, str | None]) -> tuple[int, Summary | None]:
    """A cancelled shard: its summary if this run wrote one (a new run_id), else interrupted before
    it saved anything; either way its committed rows are safe and a rerun resumes it."""
    summary = _summary(out, shard)
    if summary and summary.run_id != before.get(shard.label):
        return summary.exit_status, summary
    return int(ExitStatus.INTERRUPTED), None


def _summary(out: Path, shard: Shard) -> Summary | None:
    return Summary.load(out / ("summary.json" if shard.count == 1 else f"summary-{shard.label}.json"))


def _summary_run(out: Path, shard: Shard) -> str | None:
    summary = _summary(out, shard)
    return summary.run_id if summary else None


def _committed_rows(out: Path, seen: dict[Path, int]) -> int:
    """Rows in the committed parts (each part's row count read once, from its footer)."""
    import pyarrow.parquet as pq

    for part in committed_parts(out / "results"):
        if part not in seen:
            try:
                seen[part] = pq.read_metadata(part).num_rows
            except OSError:  # moved by a --retry-errors rewrite: counted again next time
                continue
    return sum(n for p, n in seen.items() if p.exists())
