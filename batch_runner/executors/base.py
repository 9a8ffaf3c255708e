"""Executors: where a job's shards run. Every one runs the same shard runner (``runner.run_shard``),
and every one resumes from the same committed parts and completion markers, so a job may be
started by one executor and finished by another.

    local  this task's shard in this process (the default outside Slurm)
    node   engine.data_parallel D: D worker processes on this node, one engine and shard each (parallel.py)
    slurm  the array task's shard (SLURM_ARRAY_TASK_ID), then local or node; the array is the scheduler
    ray    shards as Ray tasks on a Ray cluster, retried on worker loss (ray_executor.py)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import JobSpec
from ..engines.gpu import visible_devices
from ..engines.mainscript import refuse_in_child_import
from ..errors import RESUME_ADVICE, ExitStatus, JobError, writing
from ..inputs.assignment import ALL, Shard, shard_from_slurm
from ..output import resume
from ..output.ownership import refuse_foreign
from ..output.status import array_size
from ..records import Summary
from ..runner.shard import RunOptions, run_shard
from .node import NodeExecutor, Worker, combined_status, plan

log = logging.getLogger("batch_runner")


@dataclass
class Execution:
    """How a job's run on an executor ended."""

    status: ExitStatus
    summaries: list[Summary] = field(default_factory=list)  # one per shard that finished a run
    engines: int = 1  # engines that ran side by side
    preview: dict[str, Any] = field(default_factory=dict)  # --dry-run only


def executor_kind(job: JobSpec, asked: str | None, env: Mapping[str, str]) -> str:
    kind = asked or job.executor.kind
    if kind == "auto":
        return "slurm" if env.get("SLURM_ARRAY_TASK_ID") is not None else "local"
    return kind


def execute(job: JobSpec, options: RunOptions, kind: str | None = None, shard: Shard | None = None,
            verbose: bool = False, env: Mapping[str, str] = os.environ) -> Execution:
    """Run (or resume) the job on an executor: ``kind`` (else the job's ``executor.kind``), for the
    shard given (``--shard``), else the one the executor says."""
    kind = executor_kind(job, kind, env)
    if kind == "ray" and not options.dry_run:
        from .ray import run_on_ray

        return run_on_ray(job, options, verbose)
    if shard is None and kind == "slurm":
        shard = shard_from_slurm(env, array_size(job.output_dir))
        if shard is None:
            raise JobError("executor slurm: not in a Slurm array task (SLURM_ARRAY_TASK_ID is not set); "
                           "submit it with sbatch --array, or give --shard I/N")
        print(f"batch-run: Slurm array task {shard.index}: shard {shard.index}/{shard.count}", file=sys.stderr,
              flush=True)
    options = replace(options, shard=shard or ALL)
    if not options.dry_run and job.engine.data_parallel != 1:
        workers, tp = plan(job.engine, options.shard, visible_devices(env))
        if len(workers) > 1:
            return run_on_node(job, options, workers, tp, verbose)
    result = run_shard(job, options)
    return Execution(result.status, [result.summary] if result.summary else [], preview=result.preview)


def run_job(job: JobSpec, options: RunOptions = RunOptions(), executor: str | None = None) -> Execution:
    """Run (or resume) a job as the CLI does: on its executor (or ``executor``), with data_parallel
    honoured; ``options.shard`` if one is given, else the executor's."""
    refuse_in_child_import()
    return execute(job, options, executor, options.shard if options.shard != ALL else None)


def prepare_shards(job: JobSpec, options: RunOptions, shards: list[Shard]) -> None:
    """What a parent checks once before its shards start side by side: the folder, the job and the
    whole input (converting an embedded model once), the fingerprint; and --fresh for all the shards
    at once, under all their locks (the shards must not do it themselves: they would race)."""
    out = job.output_dir
    for s in shards:
        resume.check_output_folder(job, s, options.job_file)
    report = run_shard(job, RunOptions(dry_run=True, dry_run_rows=0, shard=shards[0])).preview["report"]
    wanted = resume.fingerprint(job, shards[0], report.assignment, report.content)
    with writing(out, resume.OUTPUT_ADVICE, ExitStatus.USAGE):
        out.mkdir(parents=True, exist_ok=True)
    refuse_foreign(out, resume.read_job_record(out))  # before --fresh moves anything
    if options.fresh:
        locks = [resume.OutputLock(out, s.label) for s in shards]
        try:
            for lock in locks:
                lock.acquire()
            with writing(out, RESUME_ADVICE):
                moved = resume.move_aside(out, {s.label for s in shards}, wanted)
            if moved:
                log.warning("moved the old results to %s", moved)
        finally:
            for lock in locks:
                lock.release()
    with writing(out, RESUME_ADVICE):
        resume.check_fingerprint(out, wanted, json.loads(job.model_dump_json()), report.kept_schema,
                                    report.content)


def run_on_node(job: JobSpec, options: RunOptions, workers: list[Worker], tp: int, verbose: bool) -> Execution:
    """engine.data_parallel: this task's shards side by side on this node."""
    job = job.model_copy(update={"engine": job.engine.model_copy(
        update={"data_parallel": len(workers), "tensor_parallel_size": tp})})
    prepare_shards(job, options, [w.shard for w in workers])
    node = NodeExecutor(workers, job.output.log_format)
    node.start(job, options.retry_errors, verbose)
    codes = node.wait()
    return Execution(combined_status(codes), [w.summary for w in workers if w.summary], len(workers))
