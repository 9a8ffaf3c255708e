"""The shard runner (``run_shard``): one shard of a job from checks to summary. Every executor runs it.

    checks ─▶ pre-flight (whole input) ─▶ lock, fingerprint, resume state ─▶ engine start
    (--fresh: lock, the refusals that need no engine, engine start ─▶ move aside, job.json, resume state)
           ─▶ pipeline (prepare ▸ engine ▸ finish ▸ commit) ─▶ completeness, summary, marker

The stages live in their own modules (``prepare``, ``engine``, ``finish``, ``commit``, composed by
``pipeline``); this module decides what runs and says how it ended.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import storage
from ..config import JobSpec
from ..engines import Engine, check_backend, get_engine, max_num_seqs, restart_engine
from ..engines.vllm_engine import auto_size, is_cpu_platform, kv_capacity_tokens, vllm_version
from ..engines.watch import WatchedEngine
from ..errors import EngineError, ExitStatus, JobError, StorageError, writing
from ..inputs.assignment import ALL, Shard
from ..inputs.preflight import Preflight, ShardInput, preflight, preview
from ..inputs.token_sample import row_tokens
from ..observe.metrics import RunMetrics
from ..observe.progress import Progress, say
from ..output import resume
from ..records import EngineSizing, Summary
from ..storage import is_url
from .commit import Committer, Listener, PartWriter
from .finish import finish_shard
from .ordering import rows_to_run
from .pipeline import Pipeline
from .requests import RequestBuilder
from .stop import StopRequest

log = logging.getLogger("batch_runner")

QUEUE_DEPTH = 4  # requests kept unfinished in the engine, in multiples of max_num_seqs
TIMELINE_INTERVAL_S = 5.0  # seconds per row of the engine timeline


@dataclass
class RunOptions:
    fresh: bool = False
    retry_errors: bool = False
    shard: Shard = ALL
    dry_run: bool = False
    dry_run_rows: int = 3
    job_file: Path | None = None  # for the output-folder check: an output must not hold its own job file
    listeners: list[Listener] = field(default_factory=list)  # more listeners of progress events
    progress: bool = True  # print progress (an embedding program may want only its listeners)
    given: ShardInput | None = None  # this shard's input report from its executor's one pre-flight


@dataclass
class RunResult:
    status: ExitStatus
    out: Path
    summary: Summary | None = None
    preview: dict[str, Any] = field(default_factory=dict)  # --dry-run: the rendered prompts and the report


@dataclass
class _Context:
    """What the pre-flight settled, for the rest of the run."""

    job: JobSpec
    shard: Shard
    pre: Preflight
    started: datetime
    t0: float
    sizing: EngineSizing | None = None  # engine.max_num_seqs auto: what was chosen (engines.sizing)
    engine_args: dict[str, Any] = field(default_factory=dict)  # what the engine started with (a restart's too)


def run_shard(job: JobSpec, options: RunOptions = RunOptions()) -> RunResult:
    """Run (or resume) one shard of a job in this process; see the module docstring."""
    if is_url(job.output.dir) and not options.dry_run:
        return _run_in_store(job, options)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    shard = options.shard
    if not options.dry_run:
        resume.check_output_folder(job, shard, options.job_file)
        check_backend(job.engine.backend)
    pre = preflight(job, shard, options.given)
    for note in pre.report.notes:
        log.warning(note)
    if options.dry_run:
        return RunResult(ExitStatus.OK, job.output_dir,
                         preview=preview(job.input, pre.renderer, pre.report, options.dry_run_rows))
    ctx = _Context(job, shard, pre, started, t0)
    lock = _first_write(job.output_dir, shard.label)
    with lock, StopRequest() as stop:
        started = _start_before_fresh(ctx, stop) if options.fresh else None
        kept, done = resume.open_shard(job, shard, pre.report, options.fresh, options.retry_errors)
        return _run_rows(ctx, options, stop, kept, done, started)


def _run_in_store(job: JobSpec, options: RunOptions) -> RunResult:
    """An output in S3: the shard runs on a local copy of what it needs (job.json, its own parts and
    marker), under its lease; each file it writes goes on to the bucket at once (storage.py)."""
    url, label = str(job.output.dir), options.shard.label
    if options.fresh:  # moving objects aside in a store means copying, then deleting the originals
        raise JobError(f"--fresh: {url} is in object storage, where moving the old results aside would delete "
                       "objects, which batch-run never does; give the run a new output.dir (--output)")

    def needed(inside: str) -> bool:
        if inside.startswith(("results/", "stats/", "timeline/")):
            return f"/part-{label}-" in inside
        return not inside.startswith(("merged/", "report/"))

    vllm_version()  # imports vLLM before the lease: that holds the GIL for seconds, which its renewal would wait out
    with storage.local_copy(url, needed, lease=label) as local:
        result = run_shard(job.model_copy(update={"output": job.output.model_copy(update={"dir": str(local)})}),
                           options)
    return result


def _first_write(out: Path, label: str) -> resume.OutputLock:
    """The output folder and this shard's lock, taken; where that fails (a full disk, a read-only
    folder: exit 2, "nothing was written"), the folder is left as it was found."""
    created = not out.exists()
    try:
        with writing(out, resume.OUTPUT_ADVICE, ExitStatus.USAGE):
            out.mkdir(parents=True, exist_ok=True)
        lock = resume.OutputLock(out, label)
        lock.acquire()
        return lock
    except StorageError:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # only what this call made: the folder and the lock file
        raise


def _start_before_fresh(ctx: _Context, stop: StopRequest) -> tuple[dict[str, Any], Engine] | None:
    """--fresh: the refusals that need no engine, then the engine's start, all before anything is
    moved aside or job.json is written: a start that fails (a value vLLM refuses, no memory) or a
    stop signal during it leaves the old results where they were, resumable."""
    resume.check_fresh(ctx.job, ctx.shard, ctx.pre.report)
    if not ctx.pre.report.shard_ids:  # no row in this shard: no engine to wait for
        return None
    try:
        return _start_engine(ctx, stop)
    except EngineError as e:
        raise EngineError(f"{e}\n--fresh: nothing was moved; the old results were left in place in "
                          f"{ctx.job.output_dir}") from e


def _run_rows(ctx: _Context, options: RunOptions, stop: StopRequest, kept: pa.Schema, done: set[str],
              started: tuple[dict[str, Any], Engine] | None = None) -> RunResult:
    """Start an engine if any row is left (unless --fresh started it), run the rows through the
    pipeline, say how it ended."""
    job, out = ctx.job, ctx.job.output_dir
    todo = ctx.pre.report.shard_ids - done
    args, engine = started if started is not None else _start_engine(ctx, stop) if todo else ({}, None)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    engine_info = {k: v for k, v in args.items() if k != "model"}
    meta = {"batch_runner": json.dumps({
        **resume.output_identity(out),  # whose part it is: checked on every read (ownership.py)
        "job": job.name, "model": job.model.name, "run_id": run_id, "shard": ctx.shard.label,
        "engine": engine_info, "vllm": vllm_version(), "host": socket.gethostname()}, default=str)}
    committer = Committer(PartWriter(out, ctx.shard.label, run_id, meta, job.output.compression), kept,
                          len(todo), lambda: pipeline.engine.counters() if pipeline else None, TIMELINE_INTERVAL_S,
                          reasoning=ctx.pre.reasoning is not None, logprobs=job.input.format == "openai")
    pipeline = Pipeline(RequestBuilder(job, ctx.pre.renderer, run_id),
                        WatchedEngine(engine, _stall_timeout(job)), committer, stop, kept.names,
                        job.output.batch_size, _queue_target(args, job), job.output.flush_s, ctx.pre.reasoning,
                        restart=lambda: _restart_engine(ctx, stop), max_restarts=job.engine.max_restarts,
                        running_max=max_num_seqs(args)) \
        if engine is not None else None
    metrics = RunMetrics.for_shard(job, ctx.shard.label, ctx.pre.report.shard_rows, committer,
                                   pipeline.lock if pipeline else threading.Lock(), args)
    progress = Progress(job.output.log_format, job.name) if options.progress else None
    committer.listeners += [x for x in (progress, metrics) if x is not None] + options.listeners
    status = int(ExitStatus.FAILED)
    try:
        with metrics or nullcontext():
            if pipeline is not None:
                committer.started()
                pipeline.run(rows_to_run(job, ctx.pre.membership.owns, done, ctx.pre.renderer.prefix_key))
        ended, summary = finish_shard(ctx, committer, stop, run_id, engine_info, done,
                                      pipeline.recovery.failures if pipeline else [])
        status = int(ended)
        return RunResult(ended, out, summary)
    except BaseException as e:
        status = int(getattr(e, "exit_status", ExitStatus.FAILED))
        raise
    finally:
        if progress:
            progress.close()
        if metrics:
            metrics.write(status)


def _start_engine(ctx: _Context, stop: StopRequest) -> tuple[dict[str, Any], Engine]:
    job = ctx.job
    args, dropped = dict(ctx.pre.engine_args), ctx.pre.dropped  # checked by the pre-flight
    if dropped:
        log.warning("engine options not in vLLM %s, not passed: %s", vllm_version(), ", ".join(dropped))
    if job.model.lora_adapters and job.model.lora is None and is_cpu_platform():
        log.warning("on vLLM's CPU build, rows without a LoRA adapter that share a batch with rows that "
                    "have one get an adapter's delta (vllm-project/vllm#48421); set model.lora to "
                    "give every row an adapter")
    args = ctx.engine_args = _sized(ctx, args)
    with stop.engine_starting():
        engine = get_engine(args, job.engine.backend)
    if ctx.sizing is not None:
        ctx.sizing = _measured(ctx.sizing, kv_capacity_tokens(engine))
    ctx.pre.renderer.max_model_len = engine.max_model_len
    return args | {"ignored": dropped}, engine


def _restart_engine(ctx: _Context, stop: StopRequest) -> WatchedEngine:
    """A new engine in place of the one that failed, with the same arguments, watched as the first was;
    a stop during its start ends the run as a stop during the first start does."""
    with stop.engine_starting(restart=True):
        engine = restart_engine(dict(ctx.engine_args), ctx.job.engine.backend)
    return WatchedEngine(engine, _stall_timeout(ctx.job))


STALL_TIMEOUT_S = 120.0  # far above a healthy step on a GPU (a fraction of a second; a first step compiling: seconds)
CPU_STALL_TIMEOUT_S = 900.0  # vLLM's CPU build: a 4096-token prefill step of a large model can take minutes


def _stall_timeout(job: JobSpec) -> float:
    """engine.stall_timeout_s, or its default for the platform."""
    if job.engine.stall_timeout_s is not None:
        return job.engine.stall_timeout_s
    return CPU_STALL_TIMEOUT_S if job.engine.backend == "vllm" and is_cpu_platform() else STALL_TIMEOUT_S


def _sized(ctx: _Context, args: dict[str, Any]) -> dict[str, Any]:
    """engine.max_num_seqs auto: chosen from the job's token counts and the device (engines.sizing),
    said in one line and kept for the summary."""
    job = ctx.job
    if not job.engine.sized_from_job:
        return args
    args, ctx.sizing = auto_size(args, job.model, job.engine, row_tokens(job, ctx.pre.renderer),
                                 ctx.pre.report.shard_rows)
    if ctx.sizing is not None:
        s = ctx.sizing
        graphs = f", CUDA graphs to {s.max_cudagraph_capture_size}" if s.max_cudagraph_capture_size else ""
        say(f"engine sized from the job: max_num_seqs {s.max_num_seqs}{graphs}: {s.reason} "
            "(engine.max_num_seqs sets it)")
    return args


def _measured(sizing: EngineSizing, kv_tokens: int | None) -> EngineSizing:
    """The sizing with the KV capacity the started engine has; a warning where its chosen sequences
    do not fit in it at their longest (vLLM then preempts some and computes them again)."""
    if kv_tokens is None:
        return sizing
    fits = kv_tokens // sizing.per_seq_tokens
    log.info("KV cache: %s tokens (estimated %s): room for %s sequences of %s tokens", f"{kv_tokens:,}",
             f"{sizing.kv_tokens_estimate:,}" if sizing.kv_tokens_estimate is not None else "none",
             f"{fits:,}", f"{sizing.per_seq_tokens:,}")
    if fits < sizing.max_num_seqs:
        log.warning("the KV cache holds %d of the %d sequences chosen at their longest; set engine.max_num_seqs "
                    "(e.g. %d) if vLLM reports preemptions", fits, sizing.max_num_seqs, max(1, fits))
    return replace(sizing, kv_tokens=kv_tokens)


def _queue_target(args: dict[str, Any], job: JobSpec) -> int:
    """Keep several scheduler-fulls of requests waiting, so the engine never idles while this
    process renders, tokenizes and writes (on an H100, 2x max_num_seqs measured 0.87x raw)."""
    return max(QUEUE_DEPTH * max_num_seqs(args), 2 * job.output.batch_size)
