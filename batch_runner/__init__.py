"""batch-runner: run large prompt sets through vLLM's offline engine, resumably, into Parquet.

``run`` takes a job and a path, frame or dataset and returns the results as a ``datasets.Dataset``;
``run_job`` runs a job as the CLI does and returns how it ended.
"""

from .api import RunIncomplete, run
from .config import JobSpec, load_job
from .errors import BatchRunnerError, EngineError, ExitStatus, JobError, RowError, StorageError
from .executors import Execution, run_job
from .runner.shard import RunOptions, RunResult

__all__ = ["BatchRunnerError", "EngineError", "Execution", "ExitStatus", "JobError", "JobSpec", "RowError",
           "RunIncomplete", "RunOptions", "RunResult", "StorageError", "load_job", "run", "run_job"]
__version__ = "0.1.0"
