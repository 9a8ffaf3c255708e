"""batch-runner: run large prompt sets through vLLM's offline engine, resumably, into Parquet."""

from .config import JobSpec, load_job
from .errors import BatchRunnerError, EngineError, ExitStatus, JobError, RowError
from .runner import RunOptions, RunResult, run_job

__all__ = ["BatchRunnerError", "EngineError", "ExitStatus", "JobError", "JobSpec", "RowError", "RunOptions",
           "RunResult", "load_job", "run_job"]
__version__ = "0.1.0"
