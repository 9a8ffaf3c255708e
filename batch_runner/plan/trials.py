"""Short measured runs of a job on a sample of its own rows, each in an engine process of its own:
what ``tune`` sweeps and ``estimate`` scales up.

A trial is the shard runner on the job's first N rows (its prompts, its sampling, its output
lengths) with some engine settings changed, writing into a scratch output folder. The engine is
warmed up first on up to an engine-full of those rows, and its prefix cache emptied, so that the
measured run does not pay the engine's first-use costs (on an H200, a 500-row trial without warm-up
ran at 0.46x the throughput of the whole 20,000-row job). It runs in a
child process in a session of its own, with a time limit; an engine that cannot start (out of
memory, an option the card lacks) is a trial's result, not a crash.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import JobSpec
from ..engines.mainscript import children_skip_main
from ..errors import BatchRunnerError
from ..inputs.prompts import PromptRenderer
from ..inputs.token_sample import row_tokens
from ..records import EngineSizing, Summary


@dataclass
class TrialResult:
    name: str
    settings: dict[str, Any]  # engine keys changed from the job's, as --set takes them (engine.KEY)
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    output_tokens: int = 0
    generation_s: float = 0.0
    start_s: float = 0.0  # pre-flight, engine start and warm-up: what one task pays before it generates
    output_tok_s: float = 0.0
    total_tok_s: float = 0.0
    cache_hit_rate: float = 0.0
    gpu_memory_peak_gb: float | None = None
    error: str | None = None
    wall_s: float = 0.0  # the whole trial as the sweep's budget sees it: process, engine start, end
    passes: list[float] = field(default_factory=list)  # output tok/s of each pass; the figures above: the median pass

    @property
    def ok(self) -> bool:
        return self.error is None and self.requests > 0


def with_settings(job: JobSpec, settings: dict[str, Any]) -> JobSpec:
    """The job with ``settings`` (``engine.KEY``, ``engine.extra.KEY``, ``model.KEY``, as --set takes them)."""
    sections = {"engine": job.engine.model_dump(), "model": job.model.model_dump()}
    for key, value in settings.items():
        section, *path = key.split(".")
        target = sections[section]
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return job.model_copy(update={"engine": type(job.engine).model_validate(sections["engine"]),
                                  "model": type(job.model).model_validate(sections["model"])})


def trial_job(job: JobSpec, rows: int, settings: dict[str, Any], out: Path) -> JobSpec:
    """The job on its first ``rows`` rows, with ``settings`` (as ``with_settings``), into ``out``."""
    return with_settings(job, settings).model_copy(update={
        "input": job.input.model_copy(update={"limit": rows}),
        "output": job.output.model_copy(update={"dir": str(out), "metrics_dir": None, "openai": False}),
    })


def sizing_settings(sizing: EngineSizing) -> dict[str, Any]:
    """An engine sizing as the explicit settings (--set keys) that give it."""
    settings: dict[str, Any] = {"engine.max_num_seqs": sizing.max_num_seqs}
    if sizing.max_cudagraph_capture_size is not None:
        settings["engine.extra.compilation_config.max_cudagraph_capture_size"] = sizing.max_cudagraph_capture_size
    if sizing.max_num_batched_tokens is not None:
        settings["engine.max_num_batched_tokens"] = sizing.max_num_batched_tokens
    return settings


def sized_job(job: JobSpec, renderer: PromptRenderer, args: dict[str, Any]
              ) -> tuple[JobSpec, dict[str, Any], EngineSizing | None]:
    """engine.max_num_seqs auto: the whole job's sizing, chosen once here and set in the job
    explicitly, so that every trial runs with what the whole job will (a trial sized itself would
    size for its sample's fewer rows). Returns the job, its engine arguments and the sizing (None:
    the job's own setting stands)."""
    from ..engines.vllm_engine import auto_size

    if not job.engine.sized_from_job:
        return job, args, None
    sized, sizing = auto_size(args, job.model, job.engine, row_tokens(job, renderer), job.input.limit or 10**9)
    if sizing is None:
        return job, args, None
    return with_settings(job, sizing_settings(sizing)), sized, sizing


def fp8_kv_settings(job: JobSpec, renderer: PromptRenderer, model_path: str) -> dict[str, Any]:
    """An fp8 KV cache as a trial's settings: with auto sizing, the sequences its doubled capacity
    holds too (an fp8 cache at the bf16 cache's concurrency would leave half of it unused)."""
    from ..engines import engine_arguments

    fp8 = with_settings(job, {"model.kv_cache_dtype": "fp8"})
    sizing = sized_job(fp8, renderer, engine_arguments(model_path, fp8.model, fp8.engine)[0])[2]
    return {"model.kv_cache_dtype": "fp8", **(sizing_settings(sizing) if sizing else {})}


def warm_up(job: JobSpec) -> None:
    """A run on the trial's first rows, as many as the engine schedules at once (the whole sample
    when it is one engine-full), on the engine the trial will use (kept by the process). Every batch size and kernel shape the measured run meets is then compiled
    and captured before it is timed: after a 32-row warm-up, a 500-row trial (max_num_seqs 512) on
    a fresh H200 still ran at 13,202 output tok/s where a 1,024-row one in the next process ran at
    32,147 and the whole 20,000-row job at 28,650."""
    from ..engines import engine_arguments, max_num_seqs
    from ..runner.shard import RunOptions, run_shard

    seqs = max_num_seqs(engine_arguments(job.model.name, job.model, job.engine)[0])
    rows = min(seqs, job.input.limit or seqs)
    out = Path(job.output.dir + ".warmup")
    run_shard(job.model_copy(update={"input": job.input.model_copy(update={"limit": rows}),
                                     "output": job.output.model_copy(update={"dir": str(out)})}),
              RunOptions(progress=False))


def measure(job: JobSpec, passes: int) -> list[Summary]:
    """The trial's rows ``passes`` times on its one engine, each pass from an empty prefix cache into
    an output folder of its own (the first: the trial's; the others beside it, ``.pass-N``)."""
    from ..engines import reset_prefix_caches
    from ..runner.shard import RunOptions, run_shard

    summaries = []
    for i in range(passes):
        reset_prefix_caches()  # what the warm-up or the pass before cached would flatter this one
        out = job.output.dir if i == 0 else f"{job.output.dir}.pass-{i}"
        one = job.model_copy(update={"output": job.output.model_copy(update={"dir": out})})
        summaries.append(run_shard(one, RunOptions(progress=False)).summary)
    return summaries


def _trial_main(job_json: str, results, log: str, passes: int) -> None:
    os.setsid()  # its own session: the parent ends the trial's engine processes with it
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)  # vLLM's start-up log goes to the trial's log, not over the table
    os.dup2(fd, 2)
    from ..engines import shutdown_engines

    t0 = time.perf_counter()
    try:
        job = JobSpec.model_validate_json(job_json)
        warm_up(job)
        setup_s = time.perf_counter() - t0  # the engine's start (and the warm-up): what a task pays once
        results.put(("ok", (measure(job, passes), setup_s)))
    except BatchRunnerError as e:
        results.put(("error", str(e)))
    except Exception as e:  # any failure is the trial's result
        results.put(("error", f"{type(e).__name__}: {e}"))
    finally:
        shutdown_engines()
        results.close()
        results.join_thread()
        os._exit(0)


def folder_name(trial_name: str) -> str:
    """A trial's folder: its name in letters, digits, '.', '_' and '-' alone, so that shells, Slurm
    scripts and file transfers take it as it is ("profile (re-run)" -> "profile_re-run")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", trial_name).strip("_") or "trial"


def run_trial(job: JobSpec, name: str, settings: dict[str, Any], rows: int, scratch: Path,
              limit_s: float, passes: int = 1) -> TrialResult:
    """One trial in a child process, ended (with its engine) after ``limit_s`` seconds; with several
    ``passes`` over its rows, the pass of median throughput stands for it."""
    out = scratch / folder_name(name)
    for old in [out, *scratch.glob(f"{out.name}.pass-*")]:
        shutil.rmtree(old, ignore_errors=True)
    mp = multiprocessing.get_context("spawn")
    results = mp.Queue()
    out.mkdir(parents=True, exist_ok=True)
    proc = mp.Process(target=_trial_main, args=(trial_job(job, rows, settings, out).model_dump_json(), results,
                                                str(out) + ".log", passes))
    t0 = time.monotonic()
    with children_skip_main():
        proc.start()
    trial = TrialResult(name, settings)
    try:
        kind, value = results.get(timeout=limit_s)
    except queue.Empty:
        kind, value = "error", f"no result within {limit_s:.0f} s (stopped)"
    finally:
        _end(proc)
        trial.wall_s = time.monotonic() - t0
    if kind == "error":
        trial.error = value.splitlines()[0][:300] + f" (log: {out}.log)"
        return trial
    summaries, setup_s = value
    trial.passes = [v.this_run.output_tok_s for v in summaries]
    run = sorted(summaries, key=lambda v: v.this_run.output_tok_s)[len(summaries) // 2].this_run
    trial.requests, trial.output_tokens = run.requests, run.output_tokens
    trial.prompt_tokens, trial.cached_prompt_tokens = run.prompt_tokens, run.cached_prompt_tokens
    trial.generation_s, trial.output_tok_s = run.generation_s, run.output_tok_s
    trial.total_tok_s, trial.cache_hit_rate = run.total_tok_s, run.cache_hit_rate
    first = summaries[0]
    trial.start_s = setup_s + max(0.0, first.duration_s - first.this_run.generation_s)
    peaks = [v.gpu_memory_peak_gb for v in summaries if v.gpu_memory_peak_gb is not None]
    trial.gpu_memory_peak_gb = max(peaks) if peaks else None
    return trial


def _end(proc) -> None:
    """The trial's whole session: its engine must not hold the device for the next trial."""
    proc.join(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.join(timeout=10)
    time.sleep(1.0)  # the device's memory is given back asynchronously
