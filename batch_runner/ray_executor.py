"""The Ray executor: a job's shards as Ray tasks on an existing Ray cluster.

Each task is the shard runner on one shard, with the GPUs its engine needs (tensor_parallel_size);
Ray places the tasks and, when a worker is lost (node gone, process killed), runs the task again,
and the new run resumes from the shard's committed parts like any rerun. The output folder must be
on storage every node sees. Combined progress comes from the committed parts themselves, so it
stays right across retries. Ray is an optional extra (``pip install 'batch-runner[ray]'``).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import JobSpec
from .errors import ExitStatus, JobError, ResumeConflict
from .output import committed_parts
from .parallel import combined_status
from .records import Summary
from .runner import RunOptions
from .sharding import ALL, Shard

log = logging.getLogger("batch_runner")

LOCK_WAIT_S = 60.0  # a retried task may start before the lost worker's engine has let go of the lock
PROGRESS_EVERY_S = 10.0


def _import_ray():
    try:
        import ray
    except ImportError:
        raise JobError("executor.kind ray: Ray is not installed here; install the extra "
                       "(pip install 'batch-runner[ray]'), or choose another executor") from None
    return ray


def shard_task(job_json: str, shard: Shard, retry_errors: bool) -> tuple[int, dict[str, Any] | None, str]:
    """A Ray task: the shard runner on one shard. Returns (exit status, summary, error message)."""
    from .engine import shutdown_engines
    from .errors import BatchRunnerError
    from .runner import run_shard

    job = JobSpec.model_validate_json(job_json)
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        while True:
            try:
                result = run_shard(job, RunOptions(shard=shard, retry_errors=retry_errors, progress=False))
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


def run_on_ray(job: JobSpec, options: RunOptions, verbose: bool):
    from .executors import Execution, prepare_shards

    ray = _import_ray()
    job = _absolute_paths(job)
    try:
        ray.init(address=job.executor.ray_address, log_to_driver=verbose, logging_level=logging.WARNING)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... when no cluster answers
        raise JobError(f"executor.ray_address: cannot join the Ray cluster at {job.executor.ray_address!r}: "
                       f"{type(e).__name__}: {e}") from e
    try:
        count = shard_count(ray, job)
        shards = [Shard(i, count) for i in range(count)]
        prepare_shards(job, replace(options, shard=ALL), shards)
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        tp = job.engine.tensor_parallel_size if isinstance(job.engine.tensor_parallel_size, int) else 1
        task = ray.remote(shard_task).options(num_cpus=1, num_gpus=tp if gpus else 0,
                                             max_retries=job.executor.max_retries, name="batch-run-shard")
        job_json = job.model_dump_json()
        refs = {task.remote(job_json, s, options.retry_errors): s for s in shards}
        print(f"batch-run: {count} shards as Ray tasks on {job.executor.ray_address}", file=sys.stderr, flush=True)
        codes, summaries = _wait(ray, refs, job.output_dir)
        return Execution(combined_status(codes), summaries, len(shards))
    finally:
        ray.shutdown()


def _absolute_paths(job: JobSpec) -> JobSpec:
    """The job with its input and output paths made absolute: the tasks run in other folders."""
    update = {"output": job.output.model_copy(update={"dir": str(job.output_dir.resolve())})}
    if job.input.path is not None and not Path(job.input.path).is_absolute():
        update["input"] = job.input.model_copy(update={"path": str(Path(job.input.path).resolve())})
    return job.model_copy(update=update)


def _wait(ray, refs: dict, out: Path) -> tuple[list[int], list[Summary]]:
    """Each task's outcome; combined progress meanwhile; a stop signal cancels the tasks (each saves
    its finished rows: Ray interrupts them with SIGINT)."""
    codes, summaries, pending = [], [], list(refs)
    stopping: list[int] = []
    seen: dict[Path, int] = {}
    old = {s: signal.signal(s, lambda n, f: stopping.append(n)) for s in (signal.SIGTERM, signal.SIGINT)}
    last = 0.0
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                code, summary, error = _outcome(ray, ref, refs[ref])
                codes.append(code)
                if summary:
                    summaries.append(Summary.from_dict(summary))
            if stopping and len(stopping) <= 2:
                for ref in pending:
                    ray.cancel(ref, force=len(stopping) > 1)
                stopping.append(0)  # cancelled once per signal
            if time.monotonic() - last > PROGRESS_EVERY_S:
                last = time.monotonic()
                print(f"batch-run: {_committed_rows(out, seen)} rows committed, {len(pending)} of {len(refs)} "
                      "shards still running", file=sys.stderr, flush=True)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return codes, summaries


def _outcome(ray, ref, shard: Shard) -> tuple[int, dict | None, str]:
    try:
        code, summary, error = ray.get(ref)
    except Exception as e:  # retries used up, or cancelled: the shard's finished rows are saved
        print(f"batch-run: shard {shard.label} failed on Ray ({type(e).__name__}); its finished rows are saved: "
              "rerun the job to resume it", file=sys.stderr, flush=True)
        return int(ExitStatus.FAILED), None, str(e)
    if error:
        print(f"batch-run: [{shard.label}] error: {error}", file=sys.stderr, flush=True)
    return code, summary, error


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
