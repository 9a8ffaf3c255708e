"""What every executor shares: how a run ended (``Execution``), the base class, and the steps a
parent takes once before its shards start side by side (``prepare_shards``).

Every executor runs the same shard runner (``runner.run_shard``) and resumes from the same committed
parts and completion markers, so a job may be started by one executor and finished by another.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..config import JobSpec
from ..errors import RESUME_ADVICE, ExitStatus, JobError, writing
from ..inputs.assignment import ALL, Shard
from ..inputs.preflight import ShardInput, preflight_shards
from ..output import resume
from ..output.ownership import refuse_foreign
from ..records import Summary
from ..runner.shard import RunOptions, run_shard
from ..storage import is_url

log = logging.getLogger("batch_runner")


@dataclass
class Execution:
    """How a job's run on an executor ended."""

    status: ExitStatus
    summaries: list[Summary] = field(default_factory=list)  # one per shard that finished a run
    engines: int = 1  # engines that ran side by side
    preview: dict[str, Any] = field(default_factory=dict)  # --dry-run only


@dataclass
class Executor(ABC):
    """A place to run a job's shards. ``shard``: the one the caller chose (``--shard``), else the
    executor's own (the whole job, or the Slurm array task's)."""

    name: ClassVar[str]
    verbose: bool = False
    shard: Shard | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @abstractmethod
    def run(self, job: JobSpec, options: RunOptions) -> Execution:
        """Run (or resume) the job here; ``options.dry_run`` previews it without running anything."""


def run_here(job: JobSpec, options: RunOptions) -> Execution:
    """One shard in this process."""
    result = run_shard(job, options)
    return Execution(result.status, [result.summary] if result.summary else [], preview=result.preview)


# Worst first: the parent's exit status is that of its worst shard.
# ABORTED (a second SIGINT) ranks with the failures: a worker ended that way saved nothing more.
_SEVERITY = [ExitStatus.FAILED, ExitStatus.ABORTED, ExitStatus.USAGE, ExitStatus.INTERRUPTED, ExitStatus.ROW_ERRORS,
             ExitStatus.OK]


def combined_status(codes: list[int]) -> ExitStatus:
    statuses = [ExitStatus(c) if c in ExitStatus._value2member_map_ else ExitStatus.FAILED for c in codes]
    return min(statuses, key=_SEVERITY.index)


def prepare_shards(job: JobSpec, options: RunOptions, shards: list[Shard]) -> list[ShardInput]:
    """What a parent checks once before its shards start side by side: the folder, the job and the
    whole input (one pre-flight: converting an embedded model once, one pass over the input), the
    fingerprint; and --fresh for all the shards at once, under all their locks (the shards must not
    do it themselves: they would race). Returns each shard's input report, for its run
    (``RunOptions.given``): the shards do not read the input again before they run it."""
    if is_url(job.output.dir):
        raise JobError(f"output.dir: {job.output.dir}: an output in object storage is written one shard per "
                       "process (--shard, or an array of tasks); executor.data_parallel and the ray executor are "
                       "for local and shared-filesystem outputs")
    out = job.output_dir
    for s in shards:
        resume.check_output_folder(job, s, options.job_file)
    pre, inputs = preflight_shards(job, shards)
    for note in pre.report.notes:
        log.warning(note)
    report = pre.report
    wanted = resume.fingerprint(job, shards[0], report.assignment, report.content)
    with writing(out, resume.OUTPUT_ADVICE, ExitStatus.USAGE):
        out.mkdir(parents=True, exist_ok=True)
    refuse_foreign(out, resume.read_job_record(out))  # before --fresh moves anything
    if options.fresh:
        _fresh(out, shards, wanted)
    with writing(out, RESUME_ADVICE):
        resume.check_fingerprint(out, wanted, json.loads(job.model_dump_json()), report.kept_schema,
                                 report.content)
    return inputs


def _fresh(out, shards: list[Shard], wanted: dict[str, Any]) -> None:
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


def with_shard(options: RunOptions, shard: Shard | None) -> RunOptions:
    return replace(options, shard=shard or ALL)
