"""The Python API for dataset pipelines: a job on a path, a pandas frame or a ``datasets.Dataset``,
its results back as a ``datasets.Dataset``.

    import batch_runner
    answers = batch_runner.run("jobs/summarize.yaml", frame, output_dir="/scratch/summaries")

It is the CLI's run, on the same executors, resumable through the same output folder: call it
again after a crash and it runs only the rows without a result. A frame or an in-memory dataset is
staged once as a Parquet file named by its content (in batch-runner's cache), so the same data is
the same input to the resume fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import JobSpec, load_job
from .engines.mainscript import refuse_in_child_import
from .errors import BatchRunnerError, ExitStatus, JobError, writing
from .output.parts import committed_parts
from .output.schemas import storable
from .records import Summary
from .runner.shard import RunOptions

log = logging.getLogger("batch_runner")
STAGE_BATCH_ROWS = 10_000


class RunIncomplete(BatchRunnerError):
    """The run ended with rows left (interrupted, or an engine failure); rerun to resume."""

    def __init__(self, status: ExitStatus, summaries: list[Summary]):
        super().__init__(f"the run ended {status.name.lower()} with rows left; call run() again to resume")
        self.exit_status, self.summaries = status, summaries


def run(job: JobSpec | str | Path, data: Any = None, *, output_dir: str | Path | None = None,
        overrides: Sequence[str] = (), executor: str | None = None, fresh: bool = False,
        retry_errors: bool = False, progress: bool = True):
    """Run (or resume) ``job`` and return every result row, in input order, as a ``datasets.Dataset``.

    ``job``: a ``JobSpec`` or a job file (``overrides`` as ``--set`` takes them). ``data``, if given,
    replaces the job's input: a path, a ``pandas.DataFrame`` or a ``datasets.Dataset``. Rows whose
    result is an error are included (``error_code`` says which); a run that ends with rows left raises
    ``RunIncomplete``, after saving what finished.
    """
    from .executors import execute

    refuse_in_child_import()
    spec = job.model_copy(deep=True) if isinstance(job, JobSpec) else load_job(job, list(overrides))
    if data is not None:
        fmt = "auto" if isinstance(data, (str, os.PathLike)) else "parquet"
        spec.input = spec.input.model_copy(update={"path": stage(data), "dataset": None, "format": fmt})
    if output_dir is not None:
        spec.output = spec.output.model_copy(update={"dir": str(output_dir)})
    done = execute(spec, RunOptions(fresh=fresh, retry_errors=retry_errors, progress=progress), executor)
    if done.status not in (ExitStatus.OK, ExitStatus.ROW_ERRORS):
        raise RunIncomplete(done.status, done.summaries)
    return results(spec)


def stage(data: Any) -> str:
    """A path for the input: a path as it is; a frame or a dataset written once as Parquet."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    return str(_stage_batches(_record_batches(data)))


def _record_batches(data: Any) -> Iterable[pa.RecordBatch]:
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            yield from _frame_table(data).to_batches(STAGE_BATCH_ROWS)
            return
    except ImportError:
        pass
    import datasets

    if isinstance(data, datasets.Dataset):  # batch by batch: a memory-mapped dataset stays on disk
        for table in data.with_format("arrow").iter(batch_size=STAGE_BATCH_ROWS):
            yield from table.to_batches()
        return
    raise JobError(f"run(data=...): give a path, a pandas.DataFrame or a datasets.Dataset, not {type(data).__name__}")


def _frame_table(frame) -> pa.Table:
    """A frame as one Arrow table. A column Arrow cannot give one type (ints and strings, ints past
    64 bits) is staged as text, JSON for non-text values: the CLI stores such a column so too."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    columns = {}
    for name in frame.columns:
        try:
            columns[str(name)] = pa.array(frame[name], from_pandas=True)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            columns[str(name)] = _text_column(str(name), frame[name])
    return pa.table(columns)


def _text_column(name: str, values) -> pa.Array:
    import pandas as pd

    try:
        texts = [None if pd.api.types.is_scalar(v) and pd.isna(v) else storable(v, pa.string()) for v in values]
    except ValueError as e:  # a lone surrogate: not text, so no Parquet file can hold it
        raise JobError(f"run(data=...): column '{name}' holds a value that cannot be stored: {str(e)[:200]}") from None
    kinds = sorted({type(v).__name__ for v, t in zip(values, texts) if t is not None})
    log.warning("run(data=...): column '%s' holds %s values; it is stored as text (JSON for non-text values)",
                name, " and ".join(kinds))
    return pa.array(texts, pa.string())


def _stage_batches(batches: Iterable[pa.RecordBatch]) -> Path:
    from .engines.models import cache_advice, cache_base

    folder = cache_base() / "inputs"
    with writing(folder, cache_advice(), ExitStatus.USAGE):
        return _write_staged(batches, folder)


def _write_staged(batches: Iterable[pa.RecordBatch], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digest, tmp = hashlib.sha256(), folder / f".staging-{os.getpid()}.parquet"
    writer = None
    try:
        for batch in batches:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as ipc:
                ipc.write_batch(batch)
            digest.update(sink.getvalue())
            writer = writer or pq.ParquetWriter(tmp, batch.schema)
            writer.write_batch(batch)
        if writer is None:
            raise JobError("run(data=...): the data has no rows")
        writer.close()
        target = folder / f"{digest.hexdigest()[:32]}.parquet"
        if target.exists():  # staged before: keep that file, so its identity (and the resume) holds
            tmp.unlink()
        else:
            os.replace(tmp, target)
        return target
    finally:
        if tmp.exists():
            tmp.unlink()


def results(job: JobSpec):
    """The output's committed results as a ``datasets.Dataset`` (memory-mapped), in input order."""
    import datasets

    from .inputs.readers import iter_rows, row_id
    from .output.ownership import refuse_foreign
    from .output.resume import read_job_record
    from .storage import output_folder

    with output_folder(job.output.dir or job.output_dir) as out:  # an s3:// output: read from a local copy
        refuse_foreign(out, read_job_record(out))  # never another output's rows
        parts = [str(p) for p in committed_parts(out / "results")]
        found = datasets.Dataset.from_parquet(parts)  # (copied into datasets' cache: it outlives the copy)
    position = {str(row_id(job.input, row.index, row.data)): i for i, row in enumerate(iter_rows(job.input))}
    order = sorted(range(len(found)), key=lambda i, ids=found["id"]: position.get(ids[i], len(position)))
    return found.select(order)
