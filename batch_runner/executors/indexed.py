"""The cloud schedulers' arrays: AWS Batch, Google Cloud Batch and Kubernetes Indexed Jobs. As in a
Slurm array, a task's index is its shard, then the local executor runs it (one engine, or
``executor.data_parallel`` engines on the task's node); the scheduler is the array.

One table says where each scheduler puts a task's index and the array's size, and how to run the
missing shards again. The only module that reads these schedulers' environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import JobSpec
from ..errors import JobError
from ..inputs.assignment import Shard
from ..observe.progress import say
from ..output.status import array_ranges, array_size
from ..runner.shard import RunOptions
from ..storage import is_url
from .base import Execution, Executor
from .local import LocalExecutor


@dataclass(frozen=True)
class Scheduler:
    title: str
    index_var: str  # the task's index, 0-based, set by the scheduler
    count_var: str  # the array's size: set by the scheduler (Kubernetes: by the manifest)
    again: str  # how to run the whole array again: its complete shards exit 0 at once


SCHEDULERS: dict[str, Scheduler] = {
    "aws_batch": Scheduler("AWS Batch array job", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE",
                           "submit the array job again (aws batch submit-job --cli-input-json file://JOB.json)"),
    "gcp_batch": Scheduler("Google Cloud Batch job", "BATCH_TASK_INDEX", "BATCH_TASK_COUNT",
                           "submit the job again under a new name (gcloud batch jobs submit NAME --config JOB.json)"),
    # Kubernetes gives a pod its index only; the manifest sets the count (deploy/kubernetes-indexed-job.yaml)
    "kubernetes": Scheduler("Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", "BATCH_RUN_SHARDS",
                            "create the Job again (kubectl replace --force -f MANIFEST.yaml)"),
}


def in_task(kind: str, env: Mapping[str, str]) -> bool:
    return SCHEDULERS[kind].index_var in env


def shard_from_env(kind: str, env: Mapping[str, str], shards: int | str = "auto",
                   recorded: int | None = None) -> Shard:
    """The shard of this task of ``kind``'s array: its index, of the array's size (the count variable,
    or ``executor.shards``; the two must agree). ``recorded``: the output's array size, fixed by its
    first run; a different size is refused before anything is read."""
    s = SCHEDULERS[kind]
    if s.index_var not in env:
        raise JobError(f"executor {kind}: not in a task of a {s.title} ({s.index_var} is not set); "
                       "run it there, or give --shard I/N")
    index = _whole(s.index_var, env[s.index_var])
    count = _count(kind, env, shards)
    if not 0 <= index < count:
        raise JobError(f"{s.index_var}={index} is not an index of an array of {count} tasks "
                       f"({_where_count(kind, env)}): it must be 0 to {count - 1}")
    if recorded is not None and count != recorded:
        raise JobError(f"{_where_count(kind, env)}: this output was split into {recorded} array tasks by its first "
                       f"run; run an array of {recorded} tasks (or rerun with --fresh to start over)")
    return Shard(index, count)


def _count(kind: str, env: Mapping[str, str], shards: int | str) -> int:
    s = SCHEDULERS[kind]
    given = _whole(s.count_var, env[s.count_var]) if s.count_var in env else None
    if given is not None and isinstance(shards, int) and shards != given:
        raise JobError(f"{s.count_var}={given} but executor.shards is {shards}: give the array's size once, "
                       "or make them agree")
    count = given if given is not None else shards if isinstance(shards, int) else None
    if count is None:
        set_it = (f"set {s.count_var} in the manifest to the Job's spec.completions "
                  "(deploy/kubernetes-indexed-job.yaml does), or executor.shards" if kind == "kubernetes"
                  else f"is this a task of a {s.title}?")
        raise JobError(f"{s.index_var}={env[s.index_var]} but the number of tasks is unknown ({s.count_var} is not "
                       f"set): {set_it}")
    if count < 1:
        raise JobError(f"{_where_count(kind, env)}: an array has at least 1 task")
    return count


def _where_count(kind: str, env: Mapping[str, str]) -> str:
    s = SCHEDULERS[kind]
    return f"{s.count_var}={env[s.count_var]}" if s.count_var in env else "executor.shards"


def _whole(var: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise JobError(f"{var}={text!r} is not a whole number; it should be set by the scheduler "
                       "(or give --shard I/N)") from None


def rerun_advice(kind: str, tasks: list[int], count: int) -> list[str]:
    """What ``status`` prints for the array tasks ``tasks`` (of ``count``) that have shards to run."""
    s = SCHEDULERS[kind]
    return [f"rerun ({s.title}): array indices {array_ranges(tasks)} of {count}",
            f"  the whole array: {s.again}",
            f"  or by hand, for each of those indices I: {s.index_var}=I {s.count_var}={count} batch-run JOB.yaml"]


class IndexedExecutor(Executor):
    """The array task's shard on the cloud scheduler that ``name`` names (SCHEDULERS), then local."""

    def run(self, job: JobSpec, options: RunOptions) -> Execution:
        # the output's job.json names the scheduler, so that `status` says how to rerun there
        job = job.model_copy(update={"executor": job.executor.model_copy(update={"kind": self.name})})
        shard = self.shard
        if shard is None:
            recorded = None if options.fresh else array_size(job.output.dir if is_url(job.output.dir) else job.output_dir)  # --fresh may change the size
            shard = shard_from_env(self.name, self.env, job.executor.shards, recorded)
            say(f"{SCHEDULERS[self.name].title} index {shard.index}: shard {shard.index}/{shard.count}")
        return LocalExecutor(self.verbose, shard, self.env).run(job, options)


class AwsBatchExecutor(IndexedExecutor):
    name = "aws_batch"


class GcpBatchExecutor(IndexedExecutor):
    name = "gcp_batch"


class KubernetesExecutor(IndexedExecutor):
    name = "kubernetes"
