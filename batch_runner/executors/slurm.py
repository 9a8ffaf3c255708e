"""The Slurm executor: the array task's shard, then the local executor (one engine, or
``executor.data_parallel`` engines on the task's node). The array is the scheduler.

The only module that reads Slurm's environment.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import JobSpec
from ..errors import JobError
from ..inputs.assignment import Shard
from ..observe.progress import say
from ..output.status import array_size
from ..runner.shard import RunOptions
from ..storage import is_url
from .base import Execution, Executor
from .local import LocalExecutor


def in_array_task(env: Mapping[str, str]) -> bool:
    return env.get("SLURM_ARRAY_TASK_ID") is not None


def shard_from_slurm(env: Mapping[str, str], recorded: int | None = None) -> Shard | None:
    """The shard of a Slurm array task, or None outside an array job.

    A task's shard is its index, ``SLURM_ARRAY_TASK_ID``, so that a resubmitted subset of the
    array (``--array=3,5``, in any order) runs exactly those shards. The shard count is the
    output's, fixed by its first run (``recorded``); for a new output it is the array's highest
    index + 1 (Slurm's task count would change with every resubmitted subset).
    """
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        if recorded is not None:
            count = recorded
        elif "SLURM_ARRAY_TASK_MAX" in env:
            count = int(env["SLURM_ARRAY_TASK_MAX"]) + 1
        else:
            count = int(env.get("SLURM_ARRAY_TASK_MIN", "0")) + int(env["SLURM_ARRAY_TASK_COUNT"])
    except (KeyError, ValueError) as e:
        raise JobError(f"Slurm array variables are incomplete or not numbers ({e}); pass --shard I/N") from e
    if recorded is None:
        _refuse_strided(env, count)
    if not 0 <= task < count:
        fixed = "fixed by its first run" if recorded is not None else "the array's highest index + 1"
        raise JobError(f"SLURM_ARRAY_TASK_ID={task} is not a shard of this output: it has {count} shards "
                       f"(0-{count - 1}, {fixed}); submit array indices in that range")
    return Shard(task, count)


def _refuse_strided(env: Mapping[str, str], count: int) -> None:
    """A new output's shards are the array's indices 0..max: a strided array (``--array=0-10:5``)
    would leave the indices between its steps to no task, silently. (A resubmitted subset of an
    output whose count is recorded may skip indices: those shards are done.)"""
    step = env.get("SLURM_ARRAY_TASK_STEP", "1")
    if step.isdigit() and int(step) > 1:
        tasks = env.get("SLURM_ARRAY_TASK_COUNT", "")
        instead = f"--array=0-{int(tasks) - 1}" if tasks.isdigit() and int(tasks) > 0 else "--array=0-N"
        raise JobError(f"SLURM_ARRAY_TASK_STEP={step}: this array runs every {step}th index up to "
                       f"{count - 1}, but a shard is an array index, so the job would have {count} shards of "
                       f"which only {tasks or 'some'} run; submit consecutive indices ({instead}) or give --shard I/N")


class SlurmExecutor(Executor):
    name = "slurm"

    def run(self, job: JobSpec, options: RunOptions) -> Execution:
        shard = self.shard
        if shard is None:
            shard = shard_from_slurm(self.env, array_size(job.output.dir if is_url(job.output.dir) else job.output_dir))
            if shard is None:
                raise JobError("executor slurm: not in a Slurm array task (SLURM_ARRAY_TASK_ID is not set); "
                               "submit it with sbatch --array, or give --shard I/N")
            say(f"Slurm array task {shard.index}: shard {shard.index}/{shard.count}")
        return LocalExecutor(self.verbose, shard, self.env).run(job, options)
