"""Executors: where a job's shards run. Every one runs the same shard runner (``runner.run_shard``)
and resumes from the same committed parts and completion markers, so a job may be started by one
executor and finished by another. A new place to run is one subclass of ``base.Executor``, named
in ``EXECUTORS``.

    local  this task's shard in this process (the default outside Slurm); with
           executor.data_parallel other than 1, the node executor
    node   executor.data_parallel D: D worker processes on this node, one engine and shard each
    slurm  the array task's shard (SLURM_ARRAY_TASK_ID), then local; the array is the scheduler
    aws_batch, gcp_batch, kubernetes
           the same for AWS Batch and Google Cloud Batch arrays and Kubernetes Indexed Jobs (indexed.py)
    ray    shards as Ray tasks on a Ray cluster, retried on worker loss
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import JobSpec
from ..engines.mainscript import refuse_in_child_import
from ..errors import JobError
from ..inputs.assignment import ALL, Shard
from ..runner.shard import RunOptions
from .base import Execution, Executor
from .indexed import SCHEDULERS, AwsBatchExecutor, GcpBatchExecutor, KubernetesExecutor, in_task
from .local import LocalExecutor
from .node import NodeExecutor
from .ray import RayExecutor
from .slurm import SlurmExecutor, in_array_task

# The registry: config's executor.kind and the CLI's --executor offer "auto" and these names.
EXECUTORS: dict[str, type[Executor]] = {e.name: e for e in (
    LocalExecutor, NodeExecutor, SlurmExecutor, RayExecutor, AwsBatchExecutor, GcpBatchExecutor, KubernetesExecutor)}
KINDS = ("auto", *EXECUTORS)

__all__ = ["EXECUTORS", "KINDS", "Execution", "Executor", "execute", "executor_kind", "run_job"]


def executor_kind(job: JobSpec, asked: str | None, env: Mapping[str, str]) -> str:
    """``asked`` (--executor), else the job's executor.kind; auto: the scheduler whose array task this
    is (Slurm, AWS Batch, Google Cloud Batch, Kubernetes), else local."""
    kind = asked or job.executor.kind
    if kind != "auto":
        return kind
    found = ["slurm"] * in_array_task(env) + [k for k in SCHEDULERS if in_task(k, env)]
    if len(found) > 1:
        # a guess would shard by the wrong index, or by the right one of the wrong array: refused
        names = ", ".join(f"{k} ({'SLURM_ARRAY_TASK_ID' if k == 'slurm' else SCHEDULERS[k].index_var})"
                          for k in found)
        raise JobError(f"executor.kind auto: this task is in the arrays of more than one scheduler: {names}; "
                       "choose one with executor.kind or --executor")
    return found[0] if found else "local"


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
