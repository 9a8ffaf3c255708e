"""The project's exception family and the exit statuses that cron and Slurm users rely on.

Three kinds of failure, each with its own remedy:
- ``JobError``: the job file, the input or the output directory is wrong; the user fixes it.
- ``RowError``: one row cannot be served; it becomes a result row with ``error`` set.
- ``EngineError``: the engine could not start or failed as a whole; fatal, with advice.
- ``StorageError``: a file could not be written (full disk, read-only file system): the path, the
  system's reason and what to do, never a traceback.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from contextlib import contextmanager


class ExitStatus(enum.IntEnum):
    """Process exit statuses, documented in the README and kept stable."""

    OK = 0
    FAILED = 1  # unexpected failure (a bug, or an engine crash)
    USAGE = 2  # usage or input error: nothing was started, nothing was written
    ROW_ERRORS = 3  # finished, but some rows carry an error
    INTERRUPTED = 75  # stopped by SIGTERM/SIGINT; rerun to resume (EX_TEMPFAIL)
    ABORTED = 130  # a SIGINT after a stop began (Ctrl-C again): exited at once; rerun to resume (128 + SIGINT)


MAX_LINE = 400  # characters of one line of a message: a value quoted in it may be megabytes
MAX_LINES = 40


def bounded(text: str) -> str:
    """A message cut to MAX_LINES lines of at most MAX_LINE characters, saying what was left out."""
    lines = text.splitlines() or [""]
    out = [line if len(line) <= MAX_LINE else f"{line[:MAX_LINE]}... ({len(line) - MAX_LINE:,} more characters)"
           for line in lines[:MAX_LINES]]
    if len(lines) > MAX_LINES:
        out.append(f"... ({len(lines) - MAX_LINES:,} more lines)")
    return "\n".join(out)


class BatchRunnerError(Exception):
    """Base class of every error batch-runner raises on purpose. Its message is ``bounded``: whatever
    a job file, an input or a path holds, a message stays a few screens at most."""

    exit_status = ExitStatus.FAILED

    def __init__(self, *args) -> None:
        super().__init__(*(bounded(a) if isinstance(a, str) else a for a in args))


class JobError(BatchRunnerError):
    """A problem with the job file, the input or the output that the user must fix.

    ``problems`` holds every problem found, one line each, so that one message reports them all.
    """

    exit_status = ExitStatus.USAGE

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = [f"{len(self.problems)} problems found:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ResumeConflict(JobError):
    """The output directory holds results of a different job, or another run holds its lock."""


class EngineError(BatchRunnerError):
    """The engine failed as a whole (could not start, ran out of memory)."""


class StorageError(BatchRunnerError):
    """A file or folder could not be written: a full disk, a read-only file system, no permission.

    ``exit_status`` is USAGE where nothing was changed yet (the cache, the output's lock), else FAILED:
    what was committed before stays, and a rerun resumes.
    """

    def __init__(self, path: str | os.PathLike, error: OSError, advice: str,
                 exit_status: ExitStatus = ExitStatus.FAILED):
        self.path, self.error, self.exit_status = str(path), error, exit_status
        super().__init__(f"cannot write {path}: {os_reason(error)}. {advice}")


# What to do when the output cannot be written mid-run (exit 1): nothing committed is lost.
RESUME_ADVICE = ("Every row committed before is kept and no file was left half-written: free space (or make "
                 "the folder writable), then rerun the same command to resume")


def os_reason(error: OSError) -> str:
    """The system's words for an OSError ("No space left on device"), without Python's decoration."""
    return os.strerror(error.errno) if error.errno else (error.strerror or str(error))


@contextmanager
def writing(path: str | os.PathLike, advice: str, exit_status: ExitStatus = ExitStatus.FAILED) -> Iterator[None]:
    """An OSError in the block becomes a ``StorageError`` naming the file that failed (where the system
    names it; else ``path``), its reason and ``advice``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(e.filename or path, e, advice, exit_status) from e


class RowError(BatchRunnerError):
    """One row cannot be served. ``code`` is short and stable; it goes into the ``error`` column."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class Interrupted(BatchRunnerError):
    """The run was stopped by a signal after saving what it had; a rerun resumes."""

    exit_status = ExitStatus.INTERRUPTED
