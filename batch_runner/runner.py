"""Run a job: pre-flight, resume, keep the engine fed, commit each batch as it completes.

The engine gets requests one by one and the queue is topped up while finished batches are
written, so vLLM never drains between batches. A batch's results land as one atomic Parquet part
when its last row finishes; a crash loses at most the rows still in flight.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import checkpoint
from .config import JobSpec
from .engine import (Completion, check_vllm_version, engine_arguments, get_engine, is_cpu_platform, lora_requests,
                     vllm_version)
from .errors import BatchRunnerError, EngineError, ExitStatus, Interrupted, JobError, RowError
from .gpu import GpuMonitor
from .metrics import MetricsFile, Snapshot
from .inputs import InputRow, input_identity, iter_rows, resolve_files
from .models import resolve_model
from .openai_batch import write_openai_files
from .output import (STATS_SCHEMA, TIMELINE_SCHEMA, part_name, results_schema, storable_rows, sweep_temporaries,
                     timeline_part_name, write_json, write_parquet)
from .preflight import InputReport, check_input, row_id
from .progress import Progress
from .prompts import PromptRenderer, RenderedPrompt
from .sampling import RowSampling, sampling_params
from .structured import check_output
from .scheduler import chunked, grouped
from .sharding import ALL, Shard
from .stats import BatchTimes, Clock, RunTotals, batch_stats
from .timeline import Timeline

log = logging.getLogger("batch_runner")


@dataclass
class RunOptions:
    fresh: bool = False
    retry_errors: bool = False
    shard: Shard = ALL
    dry_run: bool = False
    dry_run_rows: int = 3
    job_file: Path | None = None  # for the output-folder check: an output must not hold its own job file


@dataclass
class RunResult:
    status: ExitStatus
    out: Path
    summary: dict[str, Any] = field(default_factory=dict)


QUEUE_DEPTH = 4  # requests kept unfinished in the engine, in multiples of max_num_seqs
TIMELINE_INTERVAL_S = 5.0  # seconds per row of the engine timeline
STOP_GRACE_S = 60.0  # after a stop request, the longest we wait for the engine before saving and exiting


class StopRequest:
    """SIGTERM/SIGINT: the first asks for a clean stop, a second exits at once.

    If the engine does not answer within STOP_GRACE_S (it may have been killed by the same
    signal), ``on_timeout`` saves what is finished and ends the process.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.on_timeout = lambda: None
        self.starting = False  # the engine is starting: nothing to save, stop at once
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (embedded use): no handlers
                pass
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            print("batch-run: second signal, exiting at once (rerun to resume)", file=sys.stderr, flush=True)
            os._exit(130)
        self.requested = signal.Signals(signum).name
        if self.starting:  # a start takes minutes on a GPU; no row has run, so stop now
            raise Interrupted(f"{self.requested} received while the engine was starting; nothing ran. "
                              "Rerun (or requeue) to resume")
        print(f"batch-run: {self.requested} received: saving finished rows, then stopping "
              "(signal again to exit at once)", file=sys.stderr, flush=True)
        timer = threading.Timer(STOP_GRACE_S, self.on_timeout)
        timer.daemon = True
        timer.start()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class _Batch:
    number: int
    rows: list[tuple[str, InputRow]]
    results: list[dict[str, Any] | None]
    times: BatchTimes
    pending: int = 0


def check_output_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise JobError(f"output.dir: cannot write to {out} ({probe} is not a writable folder)")


def _load_tokenizer(model_path: str, job: JobSpec):
    from transformers import AutoTokenizer

    source = job.model.tokenizer or model_path
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=job.model.trust_remote_code,
                                             revision=job.model.revision)
    except (OSError, ValueError) as e:
        raise JobError(f"model: cannot load the tokenizer of {source}: {e}") from e


def _context_length(model_path: str, job: JobSpec) -> int:
    if job.model.max_model_len:
        return job.model.max_model_len
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=job.model.trust_remote_code)
    return int(getattr(config, "max_position_embeddings", 2048))


def fingerprint(job: JobSpec, shard: Shard) -> dict[str, Any]:
    """What determines the results: model, rendering, sampling, input identity, shard count."""
    return {
        "model": job.model.model_dump(),
        "prompt": job.prompt.model_dump(exclude={"group_by_prefix", "group_window"}),
        "sampling": job.sampling.model_dump(),
        "input": {**input_identity(job.input), "id_column": job.input.id_column,
                  "keep_columns": job.input.keep_columns},
        "shards": shard.count,
    }


class _Run:
    """The state of one run of one shard."""

    def __init__(self, job: JobSpec, out: Path, shard: Shard, report: InputReport, renderer: PromptRenderer,
                 engine, engine_info: dict[str, Any], stop: StopRequest, kept: pa.Schema):
        self.job, self.out, self.shard, self.report = job, out, shard, report
        self.renderer, self.engine, self.stop = renderer, engine, stop
        self.engine_info = engine_info
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.kept = kept  # the output's kept columns, as job.json records them
        self.schema = results_schema(kept)
        self.meta = {"batch_runner": json.dumps({
            "job": job.name, "model": job.model.name, "run_id": self.run_id, "shard": shard.label,
            "engine": engine_info, "vllm": vllm_version(), "host": socket.gethostname()}, default=str)}
        self.open: dict[int, _Batch] = {}
        # request key -> (batch, position, what on_too_long changed, JSON schema) for requests in the engine
        self.keys: dict[str, tuple[int, int, str | None, dict | None]] = {}
        self.sampling = RowSampling(job.sampling, openai=job.input.format == "openai")
        self.loras = lora_requests(job.model) if job.model.lora_adapters else {}
        self.totals = RunTotals()
        self.gpu = GpuMonitor()
        self.clock = Clock()
        counters = getattr(engine, "counters", None) or (lambda: None)
        self.timeline = Timeline(shard.label, self.run_id, self.clock, TIMELINE_INTERVAL_S, counters,
                                 self.gpu.sample, self._write_timeline)
        self.progress: Progress | None = None
        self.queue_target = 0  # requests kept unfinished in the engine
        self.lock = threading.Lock()  # the main loop and the stop watchdog never commit at once
        stop.on_timeout = self.hard_stop
        self.before = checkpoint.shard_totals(out / "results", shard.label)  # committed by earlier runs
        self.metrics = MetricsFile(Path(job.output.metrics_dir), job.name, shard.label) \
            if job.output.metrics_dir else None

    def write_metrics(self, exit_status: int | None = None) -> None:
        if self.metrics is None:
            return
        t = self.totals
        errors = dict(self.before["errors_by_code"])
        for code, n in t.error_codes.items():
            errors[code] = errors.get(code, 0) + n
        self.metrics.update(Snapshot(
            rows=self.report.shard_rows, rows_done=self.before["rows"] + t.requests, errors_by_code=errors,
            prompt_tokens=t.prompt_tokens, cached_prompt_tokens=t.cached_prompt_tokens,
            output_tokens=t.output_tokens, output_tok_s=self.pace(), exit_status=exit_status),
            force=exit_status is not None)

    def pace(self) -> float:
        """This run's output tokens per second of generation: over the whole run once it has ended,
        else over the timeline's intervals so far (the engine's tokens, committed or not)."""
        return self.totals.output_tok_s if self.totals.generation_s else self.timeline.pace()

    def _write_timeline(self, chunk: int, rows: list[dict]) -> None:
        table = pa.Table.from_pylist(rows, schema=TIMELINE_SCHEMA)
        write_parquet(self.out / "timeline" / timeline_part_name(self.shard.label, self.run_id, chunk), table,
                      self.meta, self.job.output.compression)

    # -- results -------------------------------------------------------------------------
    def _base(self, batch: _Batch, pos: int) -> dict[str, Any]:
        rid, row = batch.rows[pos]
        kept = {name: row.data.get(name) for name in self.kept.names}  # made storable at commit
        return {"id": rid, **kept, "batch": batch.number}

    def _error_result(self, batch: _Batch, pos: int, err: RowError) -> dict[str, Any]:
        return {**self._base(batch, pos), "output": None, "finish_reason": "error",
                "prompt_tokens": getattr(err, "prompt_tokens", None), "cached_prompt_tokens": None,
                "output_tokens": 0, "error_code": err.code, "error": f"{err.code}: {err.message}",
                "adjustment": None, "json": None, "samples": None}

    def _result(self, batch: _Batch, pos: int, c: Completion, adjustment: str | None,
                schema: dict | None) -> dict[str, Any]:
        parsed, error = check_output([s.text for s in c.samples], schema) if schema is not None else (None, None)
        return {**self._base(batch, pos), "output": c.text, "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens, "cached_prompt_tokens": c.cached_prompt_tokens,
                "output_tokens": c.output_tokens, "error_code": error.code if error else None,
                "error": f"{error.code}: {error.message}" if error else None, "adjustment": adjustment,
                "json": parsed,
                "samples": [vars(s) for s in c.samples] if len(c.samples) > 1 else None}

    # -- submission ----------------------------------------------------------------------
    def _lora(self, row: dict[str, Any]):
        """The row's adapter: its lora_column, else an OpenAI body's model if it names one, else the job's."""
        spec = self.job.model
        name = row.get(spec.lora_column) if spec.lora_column else None
        if name is None and self.job.input.format == "openai" and row.get("model") in self.loras:
            name = row["model"]
        name = name if name is not None else spec.lora
        if name is None:
            return None
        if name not in self.loras:
            raise RowError("unknown_lora", f"LoRA adapter {name!r} is not in model.lora_adapters "
                                           f"({', '.join(self.loras) or 'none'})")
        return self.loras[name]

    def _requests(self, rows: list[tuple[str, InputRow]]) -> list[tuple[dict, Any] | RowError]:
        """Each row's sampling values and adapter, or the RowError that stops it."""
        out: list[tuple[dict, Any] | RowError] = []
        for _, row in rows:
            try:
                out.append((self.sampling.values(row.data), self._lora(row.data)))
            except RowError as e:
                out.append(e)
        return out

    def submit(self, number: int, rows: list[tuple[str, InputRow]]) -> None:
        now = time.perf_counter()
        batch = _Batch(number, rows, [None] * len(rows), BatchTimes(submitted=now))
        self.timeline.begin(now)
        self.open[number] = batch
        requests = self._requests(rows)
        max_tokens = [r[0]["max_tokens"] if not isinstance(r, RowError) else 1 for r in requests]
        rendered = self.renderer.render_many([row.data for _, row in rows], max_tokens)
        for pos, (req, r) in enumerate(zip(requests, rendered)):
            if isinstance(req, RowError) or isinstance(r, RowError):
                batch.results[pos] = self._error_result(batch, pos, req if isinstance(req, RowError) else r)
                continue
            values, lora = req
            key = f"{self.run_id}:{number}:{pos}"
            try:
                self.engine.submit(key, r.token_ids, self.sampling.params(values, r.max_tokens), lora)
            except RowError as e:
                e.prompt_tokens = len(r.token_ids)
                batch.results[pos] = self._error_result(batch, pos, e)
                continue
            self.keys[key] = (number, pos, r.adjustment, values.get("json_schema"))
            batch.pending += 1
        if batch.pending == 0:
            self.commit(batch)

    def collect(self) -> None:
        completions = self.engine.poll()
        with self.lock:
            self._record(completions)
            now = time.perf_counter()
            if self.timeline.due(now):
                self.timeline.tick(now, self.engine.unfinished())

    def _record(self, completions: list[Completion]) -> None:
        for c in completions:
            number, pos, adjustment, schema = self.keys.pop(c.key)
            batch = self.open[number]
            batch.results[pos] = self._result(batch, pos, c, adjustment, schema)
            batch.times.saw(c.started_s, c.finished_s)
            self.timeline.finished(c.output_tokens, c.prompt_tokens, c.cached_prompt_tokens)
            batch.pending -= 1
            if batch.pending == 0:
                self.commit(batch)

    # -- commits -------------------------------------------------------------------------
    def commit(self, batch: _Batch) -> None:
        """Write the finished rows of a batch as one part, with its stats row."""
        self.open.pop(batch.number, None)
        results = [r for r in batch.results if r is not None]
        if not results:
            return
        name = part_name(self.shard.label, self.run_id, batch.number)
        results = storable_rows(results, self.schema, self.kept.names)
        table = pa.Table.from_pylist(results, schema=self.schema)
        write_parquet(self.out / "results" / name, table, self.meta, self.job.output.compression)
        stats = batch_stats(self.shard.label, self.run_id, batch.number, batch.times, self.clock, results,
                            self.gpu.sample())
        row = stats.row()
        write_parquet(self.out / "stats" / name, pa.Table.from_pylist([row], schema=STATS_SCHEMA), self.meta,
                      self.job.output.compression)
        self.totals.add(stats, results)
        self.timeline.committed(len(results))
        if self.progress:
            self.progress.batch(row, self.pace())
        self.write_metrics()

    def end_timeline(self) -> None:
        """Close the last interval: the run's generation time ends here (last finish, or the stop)."""
        now = time.perf_counter()
        if self.timeline.begun is not None:
            self.timeline.tick(now, self.engine.unfinished() if self.engine else 0)
            self.totals.generation_s = now - self.timeline.begun

    def flush_partial(self) -> None:
        """Commit the finished rows of open batches; abort the rest (they run again on resume)."""
        unfinished = list(self.keys)
        try:
            self.engine.abort(unfinished)
        except Exception:  # the engine may already be gone (signal reached it too)
            log.debug("abort failed", exc_info=True)
        self.keys.clear()
        self.end_timeline()
        for batch in list(self.open.values()):
            self.commit(batch)

    def hard_stop(self) -> None:
        """The engine did not answer after a stop request: save finished rows, exit resumable."""
        with self.lock:
            self.end_timeline()
            for batch in list(self.open.values()):
                self.commit(batch)
        print("batch-run: the engine did not stop in time; finished rows saved, exiting (rerun to resume)",
              file=sys.stderr, flush=True)
        os._exit(int(ExitStatus.INTERRUPTED))

    # -- the loop ------------------------------------------------------------------------
    def rows(self, skip: set[str]):
        spec = self.job.input
        for row in iter_rows(spec):
            rid = str(row_id(spec, row.index, row.data))
            if self.shard.owns(rid) and rid not in skip:
                yield rid, row

    def _metrics_ticker(self, done: threading.Event) -> None:
        """Refresh the metrics file while no batch commits (a long first wave must not look hung)."""
        while not done.wait(self.metrics.interval):
            with self.lock:
                self.write_metrics()

    def execute_all(self, skip: set[str]) -> None:
        """Run every row not in ``skip``; the metrics say how it ended if it fails."""
        try:
            self.execute(skip, self.queue_target)
        except BaseException as e:
            self.write_metrics(int(getattr(e, "exit_status", ExitStatus.FAILED)))
            raise

    def execute(self, skip: set[str], queue_target: int) -> None:
        done = threading.Event()
        if self.metrics is not None:
            threading.Thread(target=self._metrics_ticker, args=(done,), daemon=True).start()
        try:
            self._execute(skip, queue_target)
        finally:
            done.set()

    def _execute(self, skip: set[str], queue_target: int) -> None:
        self.progress = Progress(len(self.report.shard_ids - skip), self.job.output.log_format, self.job.name,
                                 self.shard.label)
        p = self.job.prompt
        order = self.rows(skip)
        if p.group_by_prefix:
            order = grouped(order, lambda item: self.renderer.prefix_key(item[1].data), p.group_window)
        try:
            for number, rows in enumerate(chunked(order, self.job.output.batch_size)):
                if self.stop.requested:
                    break
                with self.lock:
                    self.submit(number, rows)
                while self.engine.unfinished() >= queue_target and not self.stop.requested:
                    self.collect()
            while self.keys and not self.stop.requested:
                self.collect()
        except BatchRunnerError:
            raise
        except Exception as e:  # the engine died; a signal may have reached it first
            if not self.stop.requested:
                raise EngineError(f"the engine failed during the run: {type(e).__name__}: {e}\n"
                                  "Finished rows were saved; rerun the job to resume.") from e
            log.warning("the engine stopped with the signal (%s); saving finished rows", type(e).__name__)
        finally:
            with self.lock:
                self.flush_partial()
            self.progress.close()


def _dry_run(job: JobSpec, renderer: PromptRenderer, report: InputReport, n: int) -> dict[str, Any]:
    shown = []
    for row in iter_rows(job.input):
        if len(shown) >= n:
            break
        try:
            r: RenderedPrompt | RowError = renderer.render(row.data)
        except RowError as e:
            r = e
        rid = str(row_id(job.input, row.index, row.data))
        if isinstance(r, RowError):
            shown.append({"id": rid, "error": str(r)})
        else:
            shown.append({"id": rid, "prompt_tokens": len(r.token_ids), "max_tokens": r.max_tokens,
                          "prompt": renderer.tokenizer.decode(r.token_ids)})
    return {"rows": report.rows, "shard_rows": report.shard_rows, "prompts": shown, "report": report}


def _summary(job: JobSpec, run: _Run, model_path: str, status: ExitStatus, complete: bool,
             totals: dict[str, Any], skipped: int, started: datetime, t0: float) -> dict[str, Any]:
    return {
        "job": job.name, "model": job.model.name, "model_path": model_path, "shard": run.shard.label,
        "status": status.name.lower(), "exit_status": int(status), "complete": complete,
        "interrupted_by": run.stop.requested, "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(), "duration_s": round(time.perf_counter() - t0, 2),
        "input_rows": run.report.rows, "shard_rows": run.report.shard_rows, "skipped_done": skipped,
        "output": totals, "this_run": run.totals.as_dict(), "engine": run.engine_info,
        "vllm": vllm_version(), "host": socket.gethostname(), "run_id": run.run_id,
        "gpu_memory_peak_gb": run.gpu.peak_gb}


def _columns_read(job: JobSpec, renderer: PromptRenderer) -> dict[str, str]:
    """Columns the job reads (each must be in some row: a name in no row is a typo), and what reads them."""
    columns = {c: "the prompt" for c in renderer.columns}
    columns |= {c: f"sampling.columns.{field}" for field, c in job.sampling.columns.items()}
    if job.model.lora_column:
        columns[job.model.lora_column] = "model.lora_column"
    if job.input.format != "openai":  # there, a file of only chats has no 'prompt' column and vice versa
        for name in ("messages_column", "prompt_column"):
            if getattr(job.prompt, name):
                columns[getattr(job.prompt, name)] = f"prompt.{name}"
    return columns


def check_output_folder(job: JobSpec, shard: Shard, job_file: Path | None) -> None:
    """Before the long pre-flight: the output folder is safe and writable, and no run holds this shard."""
    out = job.output_dir
    inputs = resolve_files(job.input) if job.input.path is not None else []
    folder = Path(job.input.path) if job.input.path is not None and Path(job.input.path).is_dir() else None
    checkpoint.check_output_dir(out, inputs, job_file, folder)
    check_output_writable(out)
    checkpoint.check_not_locked(out, shard.label)


def run_job(job: JobSpec, options: RunOptions = RunOptions()) -> RunResult:
    """Run (or resume) one shard of a job; see the module docstring."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out, shard = job.output_dir, options.shard
    if not options.dry_run:
        check_output_folder(job, shard, options.job_file)
        check_vllm_version()
    model_path = resolve_model(job.model.name)
    tokenizer = _load_tokenizer(model_path, job)
    renderer = PromptRenderer(job.prompt, tokenizer, _context_length(model_path, job), job.sampling.max_tokens)
    sampling_params(job.sampling)  # bad sampling values fail here, before anything starts
    report = check_input(job.input, _columns_read(job, renderer), shard)
    for note in report.notes:
        log.warning(note)
    if options.dry_run:
        return RunResult(ExitStatus.OK, out, _dry_run(job, renderer, report, options.dry_run_rows))

    out.mkdir(parents=True, exist_ok=True)
    with checkpoint.OutputLock(out, shard.label), StopRequest() as stop:
        wanted = fingerprint(job, shard)
        if options.fresh and (moved := checkpoint.move_aside(out, {shard.label}, wanted)):
            log.warning("moved the old results to %s", moved)
        kept = checkpoint.check_fingerprint(out, wanted, json.loads(job.model_dump_json()), report.kept_schema)
        sweep_temporaries(out, shard.label)
        checkpoint.clear_shard_marker(out, shard.label)
        if options.retry_errors:
            checkpoint.drop_error_rows(out / "results", shard.label, job.output.compression)
        done = checkpoint.done_ids(out / "results", shard.label)
        run = _start(job, out, shard, report, renderer, model_path, stop, kept, todo=report.shard_ids - done)
        if run.engine is not None:
            run.execute_all(done)
        return _finish(job, run, model_path, done, started, t0)


def _start(job: JobSpec, out: Path, shard: Shard, report: InputReport, renderer: PromptRenderer, model_path: str,
           stop: StopRequest, kept: pa.Schema, todo: set[str]) -> "_Run":
    """The run's state, with an engine when any row of this run is still to do."""
    args, dropped = engine_arguments(model_path, job.model, job.engine)
    if dropped:
        log.warning("engine options not in vLLM %s, not passed: %s", vllm_version(), ", ".join(dropped))
    if job.model.lora_adapters and job.model.lora is None and is_cpu_platform():
        log.warning("on vLLM's CPU build, rows without a LoRA adapter that share a batch with rows that "
                    "have one get an adapter's delta (vllm-project/vllm#48421); set model.lora to "
                    "give every row an adapter")
    stop.starting = True
    try:
        engine = get_engine(args) if todo else None
    finally:
        stop.starting = False
    if engine is not None:
        renderer.max_model_len = engine.max_model_len
    engine_info = {k: v for k, v in args.items() if k != "model"} | {"ignored": dropped}
    run = _Run(job, out, shard, report, renderer, engine, engine_info, stop, kept)
    # Keep several scheduler-fulls of requests waiting, so the engine never idles while this
    # process renders, tokenizes and writes (on an H100, 2x max_num_seqs measured 0.87x raw).
    run.queue_target = max(QUEUE_DEPTH * int(args.get("max_num_seqs") or 256), 2 * job.output.batch_size)
    run.write_metrics()
    return run


def _finish(job: JobSpec, run: "_Run", model_path: str, done_before: set[str], started: datetime,
            t0: float) -> RunResult:
    """Check what is committed now against the run's ids; summary, marker and exit status."""
    out, shard, report = run.out, run.shard, run.report
    committed = checkpoint.done_ids(out / "results", shard.label)
    missing = report.shard_ids - committed
    complete = not missing and report.rows_beyond_limit == 0  # the whole shard, not just this run's rows
    totals = checkpoint.shard_totals(out / "results", shard.label)
    if missing and not run.stop.requested:  # every row gets a result or an error row; never silently none
        log.error("%d rows of this run have no result (e.g. %s); rerun to run them",
                  len(missing), ", ".join(sorted(missing)[:5]))
    status = (ExitStatus.INTERRUPTED if missing and run.stop.requested else ExitStatus.FAILED if missing
              else ExitStatus.ROW_ERRORS if totals["errors"] else ExitStatus.OK)
    summary = _summary(job, run, model_path, status, complete, totals, len(done_before & report.shard_ids),
                       started, t0)
    run.write_metrics(int(status))
    write_json(out / ("summary.json" if shard.count == 1 else f"summary-{shard.label}.json"), summary)
    if complete:
        checkpoint.mark_shard_done(out, shard.label, summary)
        if job.output.openai and shard.count == 1:  # sharded outputs get theirs from `merge`
            answered, failed = write_openai_files(out, job.model.name)
            log.info("wrote %s: %d results, %d errors", out / "openai", answered, failed)
    return RunResult(status, out, summary)
