"""The local executor: this task's shard in this process; with ``executor.data_parallel`` other
than 1, one worker process per engine on this node (the node executor)."""

from __future__ import annotations

from ..config import JobSpec
from ..runner.shard import RunOptions
from .base import Execution, Executor, run_here, with_shard
from .node import NodeExecutor


class LocalExecutor(Executor):
    name = "local"

    def run(self, job: JobSpec, options: RunOptions) -> Execution:
        options = with_shard(options, self.shard)
        if not options.dry_run and job.executor.data_parallel != 1:
            return NodeExecutor(self.verbose, options.shard, self.env).run(job, options)
        return run_here(job, options)
