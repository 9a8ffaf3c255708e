"""Executors: where a job's shards run. Every one runs the same shard runner (``runner.run_shard``)
and resumes from the same committed parts and completion markers, so a job may be started by one
executor and finished by another. A new place to run is one subclass of ``base.Executor``, named
in ``EXECUTORS``.

    local  this task's shard in this process (the default outside Slurm); with
           executor.data_parallel other than 1, the node executor
    node   executor.data_parallel D: D worker processes on this node, one engine and shard each
    slurm  the array task's shard (SLURM_ARRAY_TASK_ID), then local; the array is the scheduler
    ray    shards as Ray tasks on a Ray cluster, retried on worker loss
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import JobSpec
from ..engines.mainscript import refuse_in_child_import
from ..inputs.assignment import ALL, Shard
from ..runner.shard import RunOptions
from .base import Execution, Executor
from .local import LocalExecutor
from .node import NodeExecutor
from .ray import RayExecutor
from .slurm import SlurmExecutor, in_array_task

# The registry: config's executor.kind and the CLI's --executor offer "auto" and these names.
EXECUTORS: dict[str, type[Executor]] = {e.name: e for e in (LocalExecutor, NodeExecutor, SlurmExecutor, RayExecutor)}
KINDS = ("auto", *EXECUTORS)

__all__ = ["EXECUTORS", "KINDS", "Execution", "Executor", "execute", "executor_kind", "run_job"]


def executor_kind(job: JobSpec, asked: str | None, env: Mapping[str, str]) -> str:
    """``asked`` (--executor), else the job's executor.kind; auto: slurm in an array task, else local."""
    kind = asked or job.executor.kind
    if kind == "auto":
        return "slurm" if in_array_task(env) else "local"
    return kind


def execute(job: JobSpec, options: RunOptions, kind: str | None = None, shard: Shard | None = None,
            verbose: bool = False, env: Mapping[str, str] = os.environ) -> Execution:
    """Run (or resume) the job on an executor: ``kind`` (else the job's ``executor.kind``), for the
    shard given (``--shard``), else the one the executor says."""
    executor = EXECUTORS[executor_kind(job, kind, env)](verbose=verbose, shard=shard, env=env)
    return executor.run(job, options)


def run_job(job: JobSpec, options: RunOptions | None = None, executor: str | None = None) -> Execution:
    """Run (or resume) a job as the CLI does: on its executor (or ``executor``), with data_parallel
    honoured; ``options.shard`` if one is given, else the executor's."""
    refuse_in_child_import()
    options = options or RunOptions()
    return execute(job, options, executor, options.shard if options.shard != ALL else None)
