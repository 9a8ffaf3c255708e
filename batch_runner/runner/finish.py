"""The end of a shard's run: are all its ids committed, how did it end, what did it cost; the
summary file, the shard's completion marker and (unsharded) the OpenAI-shaped output files."""

from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timezone
from typing import Any

from ..atomic import write_json
from ..engines.vllm_engine import vllm_version
from ..errors import RESUME_ADVICE, ExitStatus, JobError, writing
from ..inputs.digest import changed_files, files_content
from ..observe.cost import cost_of, devices_of
from ..output import resume
from ..output.openai import write_openai_files
from ..records import EngineFailure, Summary
from .commit import Committer
from .stop import StopRequest

log = logging.getLogger("batch_runner")


def finish_shard(ctx, committer: Committer, stop: StopRequest, run_id: str, engine_info: dict[str, Any],
                 done_before: set[str], failures: list[EngineFailure] = ()) -> tuple[ExitStatus, Summary]:
    """Check what is committed now against the run's ids; summary, marker and exit status."""
    job, shard, report, out = ctx.job, ctx.shard, ctx.pre.report, ctx.job.output_dir
    missing = report.shard_ids - resume.done_ids(out / "results", shard.label)
    complete = not missing and report.rows_beyond_limit == 0  # the whole shard, not just this run's rows
    totals = resume.shard_totals(out / "results", shard.label)
    if missing and not stop.requested:  # every row gets a result or an error row; never silently none
        log.error("%d rows of this run have no result (e.g. %s); rerun to run them",
                  len(missing), ", ".join(sorted(missing)[:5]))
    status = (ExitStatus.INTERRUPTED if missing and stop.requested else ExitStatus.FAILED if missing
              else ExitStatus.ROW_ERRORS if totals.errors else ExitStatus.OK)
    changed = input_changed(ctx) if complete else []
    if changed:  # the rows were read at different times: some answer the old text, some the new
        complete, status = False, ExitStatus.FAILED
        for line in changed:
            log.error("%s", line)
        log.error("its results may mix the old and the new content of the input, so the shard is not marked "
                  "complete; rerun with --fresh to run every row on the input as it is now")
    run, duration = committer.totals, time.perf_counter() - ctx.t0
    cost = cost_of(duration, run.generation_s, devices_of(engine_info), run.output_tokens,
                   run.prompt_tokens + run.output_tokens, job.output.gpu_hour_price)
    summary = Summary(
        job=job.name, model=job.model.name, model_path=ctx.pre.model_path, shard=shard.label,
        status=status.name.lower(), exit_status=int(status), complete=complete, interrupted_by=stop.requested,
        started_at=ctx.started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
        duration_s=round(duration, 2), input_rows=report.rows, shard_rows=report.shard_rows,
        skipped_done=len(done_before & report.shard_ids), output=totals, this_run=committer.totals.figures(),
        engine=engine_info, vllm=vllm_version(), host=socket.gethostname(), run_id=run_id,
        gpu_memory_peak_gb=committer.gpu_monitor.peak_gb, cost=cost, input_changed=changed or None,
        engine_failures=list(failures) or None, sizing=getattr(ctx, "sizing", None))
    with writing(out, RESUME_ADVICE):
        write_json(out / ("summary.json" if shard.count == 1 else f"summary-{shard.label}.json"), summary.as_dict())
        if complete:
            resume.mark_shard_done(out, shard.label, summary)
            if job.output.openai and shard.count == 1:  # sharded outputs get theirs from `merge`
                answered, failed = write_openai_files(out, job.model.name)
                log.info("wrote %s: %d results, %d errors", out / "openai", answered, failed)
    return status, summary


def input_changed(ctx) -> list[str]:
    """The input files hashed again at the end of the run against the pre-flight's digest: what
    changed while the run read them, one line each (``digest.changed_files``). A Hugging Face dataset
    is not checked again: its content fingerprint is not re-read cheaply (the next run compares it)."""
    before = ctx.pre.report.content
    if before.dataset or not before.files:
        return []
    try:
        now = files_content(ctx.job.input)
    except JobError as e:  # a file gone or unreadable since the pre-flight
        return [f"the input could not be read again at the end of the run: {e}"]
    if now.identity() == before.identity():
        return []
    return [line.replace(" changed (", " changed during the run (", 1)
            .replace(": new in the input", ": new in the input since the run began", 1)
            .replace(": no longer part of the input", ": gone from the input since the run began", 1)
            for line in changed_files(before.blocks(), before.identity(), now)]
