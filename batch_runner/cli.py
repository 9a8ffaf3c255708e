"""The ``batch-run`` command line: parse, load the job, call the library, map errors to exit statuses.

``batch-run JOB.yaml`` runs a job (the ``run`` command is the default); the other commands look at
an output directory.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import click

from .errors import BatchRunnerError, ExitStatus, os_reason
from .executors import KINDS as EXECUTOR_KINDS
from .logs import setup_logging

# What `tune` varies (tune.knob_of of its trials), named here so that --help needs no engine import.
TUNE_KNOBS = ("max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype", "speculative_config")


class _DefaultToRun(click.Group):
    """``batch-run JOB.yaml`` means ``batch-run run JOB.yaml``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        """A file error that no command turned into its own message (report, merge, tune) is still one
        line naming the path and the cause, exit 1, never a traceback."""
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno == errno.EPIPE:  # stdout closed by a pager or `head`: click's own handling
                raise
            click.echo(f"batch-run: error: {e.filename or 'a file'}: {os_reason(e)} (free space, or make it "
                       "writable, and run the command again)", err=True)
            sys.exit(int(ExitStatus.FAILED))


class _Output(click.ParamType):
    """An output folder that exists, or an object-store URL (``s3://bucket/folder``)."""

    name = "output_dir"

    def convert(self, value, param, ctx):
        from .storage import is_url

        if is_url(value):
            return value
        return click.Path(file_okay=False, exists=True).convert(value, param, ctx)


OUTPUT = _Output()


def shown(output_dir: str, path) -> str:
    """A path inside an output as the user named the output (``s3://`` kept whole: Path would fold '//')."""
    from .storage import is_url

    if not is_url(output_dir):
        return str(path)
    return str(path).replace(str(Path(output_dir)), output_dir.rstrip("/"), 1)


def _fail(e: BatchRunnerError) -> None:
    click.echo(f"batch-run: error: {e}", err=True)
    sys.exit(int(e.exit_status))


@click.group(cls=_DefaultToRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batch-runner")
def main() -> None:
    """Run large prompt sets through vLLM's offline engine, resumably, and write Parquet.

    \b
    batch-run JOB.yaml [OPTIONS]      run (or resume) a job
    batch-run status OUTPUT_DIR       which shards are done, partial or missing
    batch-run merge OUTPUT_DIR        compact a finished output into one dataset
    batch-run report OUTPUT_DIR       summary, HTML page and charts of an output
    """
    setup_logging(False)  # every command's messages look alike (run's --verbose adds its notes)


@main.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a job file value (YAML syntax), e.g. --set sampling.temperature=0.7.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N input rows.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False), help="Output directory (overrides output.dir).")
@click.option("--dry-run", is_flag=True, help="Validate, render and print the first prompts with token counts; start no engine.")
@click.option("--fresh", is_flag=True, help="Move existing results aside (to DIR.replaced-TIME) and start over.")
@click.option("--retry-errors", is_flag=True, help="Run again the rows whose earlier result is an error.")
@click.option("--shard", "shard_text", metavar="I/N",
              help="Run only shard I of N (0-based). Default: from the array variables of Slurm, AWS Batch, "
                   "Google Cloud Batch or a Kubernetes Indexed Job.")
@click.option("--executor", type=click.Choice(EXECUTOR_KINDS),
              help="Where the shards run (overrides executor.kind): local, node, slurm, ray, aws_batch, gcp_batch, "
                   "kubernetes; auto: the scheduler whose array task this is, else local.")
@click.option("--metrics-dir", type=click.Path(file_okay=False),
              help="node_exporter textfile directory for Prometheus metrics (overrides output.metrics_dir).")
@click.option("-v", "--verbose", is_flag=True, help="Log batch-runner's decisions (info level).")
def run_cmd(job_file: str, overrides: tuple[str, ...], limit: int | None, output_dir: str | None, dry_run: bool,
            fresh: bool, retry_errors: bool, shard_text: str | None, executor: str | None, metrics_dir: str | None,
            verbose: bool) -> None:
    """Run (or resume) the job in JOB_FILE.

    Rerunning with the same output directory resumes: rows already written are skipped. Exit
    status: 0 done, 3 done with error rows, 2 usage or input error, 75 interrupted (rerun to
    resume), 1 unexpected failure.
    """
    from .config import load_job
    from .executors import execute
    from .inputs.assignment import parse_shard
    from .runner.shard import RunOptions

    setup_logging(verbose)
    extra = list(overrides) + ([f"input.limit={limit}"] if limit else []) + \
        ([f"output.dir={json.dumps(output_dir)}"] if output_dir else []) + \
        ([f"output.metrics_dir={json.dumps(metrics_dir)}"] if metrics_dir else [])
    try:
        job = load_job(job_file, extra)
        shard = parse_shard(shard_text) if shard_text else None
        options = RunOptions(fresh=fresh, retry_errors=retry_errors, dry_run=dry_run, job_file=Path(job_file))
        result = execute(job, options, executor, shard, verbose)
    except BatchRunnerError as e:
        _fail(e)
    if dry_run:
        _print_dry_run(result.preview)
    elif len(result.summaries) == 1 and result.engines == 1:
        _print_summary(result.summaries[0])
    else:
        _print_combined(result)
    sys.exit(int(result.status))


def _print_dry_run(info: dict) -> None:
    click.echo(f"input: {info['rows']} rows ({info['shard_rows']} in this shard); nothing was run or written")
    for p in info["prompts"]:
        click.echo(f"\n--- id {p['id']}: " + (p["error"] if "error" in p else
                   f"{p['prompt_tokens']} prompt tokens, max_tokens {p['max_tokens']}"))
        if "prompt" in p:
            click.echo(p["prompt"])


def _print_summary(s) -> None:
    run, out = s.this_run, s.output
    rows = [
        ("job", f"{s.job} (shard {s.shard})"), ("status", s.status),
        ("rows", f"{out.rows}/{s.shard_rows} written, {s.skipped_done} were done before"),
        ("errors", f"{out.errors} {out.errors_by_code or ''}".strip()),
        ("this run", f"{run.requests} requests in {run.generation_s} s"),
        ("throughput", f"{run.output_tok_s} output tok/s, {run.total_tok_s} total tok/s, {run.requests_s} req/s"),
        ("prefix cache", f"{run.cache_hit_rate:.1%} of prompt tokens"),
    ]
    if s.engine_failures:  # a run that needed restarts says so, and why
        rows.append(("engine", f"restarted {run.engine_restarts} time{'s' if run.engine_restarts != 1 else ''}; "
                               f"last failure: {s.engine_failures[-1].cause}"))
    if s.cost and s.cost.price is not None:  # the table shows GPU-hours and cost with a price only
        c = s.cost
        rows.append(("GPU-hours", f"{c.gpu_hours:.4f} ({c.gpu_hours_generating:.4f} generating, "
                                  f"{c.devices} device{'s' if c.devices > 1 else ''})"))
        rows.append(("cost", f"{c.cost:.4f} at {c.price:g} per GPU-hour; per million tokens: "
                             f"{c.cost_per_m_output_tokens or 0:.4f} output, {c.cost_per_m_total_tokens or 0:.4f} total"))
    click.echo("")
    for k, v in rows:
        click.echo(f"{k:>13}  {v}")


def _print_combined(result) -> None:
    """The closing table of a run of several shards (data_parallel, Ray): totals over their summaries."""
    found = result.summaries
    rows = sum(s.output.rows for s in found)
    click.echo("")
    for k, v in [("status", result.status.name.lower()), ("engines", result.engines),
                 ("shards", ", ".join(f"{s.shard} {s.status}" for s in found) or "none finished"),
                 ("rows", f"{rows}/{sum(s.shard_rows for s in found)} written"),
                 ("errors", sum(s.output.errors for s in found)),
                 ("throughput", f"{sum(s.this_run.output_tok_s for s in found):,.1f} output tok/s "
                                "(sum over the engines: they ran side by side)")]:
        click.echo(f"{k:>13}  {v}")


def _prepare(job_file: str, overrides: tuple[str, ...]):
    """The job, its renderer and the engine arguments it would run with (no engine started)."""
    from .config import load_job
    from .engines import engine_arguments
    from .engines.models import context_length, load_tokenizer, resolve_model
    from .engines.vllm_engine import is_cpu_platform
    from .inputs.openai_batch import TOOLS
    from .inputs.prompts import PromptRenderer

    job = load_job(job_file, list(overrides))
    model_path = resolve_model(job.model.name)
    renderer = PromptRenderer(job.prompt, load_tokenizer(model_path, job), context_length(model_path, job),
                              job.sampling.max_tokens, tools_column=TOOLS if job.input.format == "openai" else None)
    args, _ = engine_arguments(model_path, job.model, job.engine)
    return job, renderer, args, not is_cpu_platform(), model_path


def _sized(job, renderer, args, say) -> tuple:
    """engine.max_num_seqs auto: the whole job's sizing, set in the job so that every trial runs it."""
    from .plan.trials import sized_job

    job, args, sizing = sized_job(job, renderer, args)
    if sizing is not None:
        say(f"engine sized from the job: max_num_seqs {sizing.max_num_seqs}: {sizing.reason}")
    return job, args


@main.command("tune")
@click.argument("job_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a job file value.")
@click.option("--rows", type=click.IntRange(min=1),
              help="Trial sample: the job's first ROWS rows (default: four times max_num_seqs and at least 2000, "
                   "so that the doubled max_num_seqs still runs two engine-fulls).")
@click.option("--budget", "budget_min", type=click.FloatRange(min=1), default=30, show_default=True,
              help="Minutes for the whole sweep.")
@click.option("--trial-limit", "trial_limit_min", type=click.FloatRange(min=1), default=10, show_default=True,
              help="Minutes for one trial.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where the trials write (default OUTPUT-tune).")
@click.option("--knob", "only", multiple=True, type=click.Choice(TUNE_KNOBS),
              help="Try only this engine argument (repeatable; default: all of them).")
def tune_cmd(job_file: str, overrides: tuple[str, ...], rows: int | None, budget_min: float, trial_limit_min: float,
             out_dir: str | None, only: tuple[str, ...]) -> None:
    """Find the fastest engine settings for JOB_FILE on this machine.

    Short trials on the job's own first rows, each in an engine of its own, over a small grid
    that starts from the job's profile (max_num_seqs, max_num_batched_tokens; on a GPU also an
    fp8 KV cache and n-gram speculative decoding). Prints a table, the best settings as --set
    options and as a job-file fragment, and the gain over the job's settings on a re-run;
    writes tune.json beside the trials.
    """
    import json as json_mod

    from .engines.vllm_engine import max_num_seqs
    from .plan.trials import fp8_kv_settings
    from .plan.tune import TUNE_ROWS, recommendation, table, tune

    def say(line: str) -> None:
        click.echo(f"batch-run tune: {line}", err=True)

    try:
        job, renderer, args, gpu, model_path = _prepare(job_file, overrides)
        fp8 = fp8_kv_settings(job, renderer, model_path) if gpu else {}
        job, args = _sized(job, renderer, args, say)
    except BatchRunnerError as e:
        _fail(e)
    rows = rows or max(TUNE_ROWS, 4 * max_num_seqs(args))
    scratch = Path(out_dir) if out_dir else job.output_dir.with_name(job.output_dir.name + "-tune")
    scratch.mkdir(parents=True, exist_ok=True)
    click.echo(f"batch-run tune: trials of {rows} rows, {budget_min:g} min budget, into {scratch}", err=True)
    result = tune(job, args, gpu, rows, scratch, budget_min * 60, trial_limit_min * 60, say, only, fp8)
    (scratch / "tune.json").write_text(json_mod.dumps(result.as_dict(), indent=1))
    click.echo(table(result))
    click.echo("")
    click.echo(recommendation(result))
    sys.exit(0 if result.trials and result.trials[0].ok else 1)


@main.command("estimate")
@click.argument("job_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a job file value.")
@click.option("--rows", type=click.IntRange(min=1),
              help="Trial sample: the job's first ROWS rows (default: twice max_num_seqs, so that the trial "
                   "runs at the engine's full pace).")
@click.option("--tuned", type=click.Path(dir_okay=False, exists=True),
              help="A tune.json: use its best trial (or its profile trial) instead of running one.")
@click.option("--price", type=click.FloatRange(min=0), help="Price of one GPU-hour (default: output.gpu_hour_price).")
@click.option("--array", "tasks", type=click.IntRange(min=1), help="Slurm array tasks (each its own engine).")
@click.option("--time", "time_limit", metavar="HH:MM:SS", help="Slurm time limit per task.")
def estimate_cmd(job_file: str, overrides: tuple[str, ...], rows: int | None, tuned: str | None, price: float | None,
                 tasks: int | None, time_limit: str | None) -> None:
    """Estimate the hours, GPU-hours and cost of the whole of JOB_FILE before submitting it.

    Counts the tokens of every input row, measures one trial on the first rows (or takes
    tune's), and scales up: generation hours, GPU-hours with and without engine starts, rows
    per hour per GPU, cost at --price, and for a Slurm array of --array tasks and a --time limit
    whether it fits, with the --array and --time to use.
    """
    import tempfile

    from .engines.vllm_engine import max_num_seqs
    from .plan.estimate import count_tokens, estimate, report, wave_note
    from .plan.trials import run_trial

    try:  # every argument is checked before the job is, and all of it before any engine starts
        limit_h = _hours(time_limit) if time_limit is not None else None  # "" (an unset variable) is refused
        tuned_trial = _tuned_trial(Path(tuned)) if tuned else None
        job, renderer, args, gpu, _ = _prepare(job_file, overrides)
        job, args = _sized(job, renderer, args, lambda line: click.echo(f"batch-run estimate: {line}", err=True))
    except BatchRunnerError as e:
        _fail(e)
    if tuned_trial:
        trial = tuned_trial
    else:
        rows = rows or 2 * max_num_seqs(args)
        click.echo(f"batch-run estimate: a trial of the first {rows} rows", err=True)
        with tempfile.TemporaryDirectory(prefix="batch-run-estimate-") as scratch:
            trial = run_trial(job, "estimate", {}, rows, Path(scratch), 3600)
    if not trial.ok:
        click.echo(f"batch-run: error: the trial failed: {trial.error}", err=True)
        sys.exit(1)
    click.echo("batch-run estimate: counting the tokens of the whole input", err=True)
    tokens = count_tokens(job, renderer, trial.requests)
    tp = args.get("tensor_parallel_size") or 1
    e = estimate(tokens, trial, int(tp) if gpu else 1, price if price is not None else job.output.gpu_hour_price,
                 tasks, limit_h)
    click.echo(report(e, trial, gpu))
    if note := wave_note(trial.requests, max_num_seqs(args), tokens.rows):
        click.echo(note)


def _hours(text: str) -> float:
    """A Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) as hours; minutes and
    seconds below 60 (hours below 24 after a day count), and more than nothing."""
    from .errors import JobError

    bad = JobError(f"--time {text[:40]!r}: give a Slurm time limit of more than zero and at most a year, as MM, "
                   "MM:SS, HH:MM:SS or D-HH[:MM[:SS]] with minutes and seconds below 60, e.g. 04:00:00 or 1-00:00:00")
    days, dash, rest = text.strip().rpartition("-")
    if not re.fullmatch(r"\d+(:\d+){0,2}", rest) or (dash and not days.isdigit()):
        raise bad
    parts = [int(x) for x in rest.split(":")]
    if days:
        (h, m, s), hour_cap = (parts + [0, 0])[:3], 24
    else:
        (h, m, s), hour_cap = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)], None
    minutes_cap = None if len(parts) < 3 and not days else 60  # MM and MM:SS take any number of minutes
    if s >= 60 or (minutes_cap and m >= minutes_cap) or (hour_cap and h >= hour_cap):
        raise bad
    hours = int(days or 0) * 24 + h + m / 60 + s / 3600
    if not 0 < hours <= 366 * 24:
        raise bad
    return hours


def _tuned_trial(path: Path):
    """The trial a tune.json recommends (its best, else its profile's); a clear error for any other file."""
    from .errors import JobError
    from .plan.trials import TrialResult

    try:
        data = json.loads(path.read_text())
        return TrialResult(**(data["best"] or data["trials"][0]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise JobError(f"--tuned {path}: not a tune.json written by `batch-run tune` ({type(e).__name__}: "
                       f"{str(e)[:120]})") from None


@main.command("status")
@click.argument("output_dir", type=OUTPUT)
def status_cmd(output_dir: str) -> None:
    """Show which shards of OUTPUT_DIR are complete, partial or missing.

    Prints the Slurm array indices to resubmit, assuming the array was --array=0-(N-1) (with
    executor.data_parallel D, array task I ran shards I*D to I*D+D-1); for an output made by an AWS
    Batch, Google Cloud Batch or Kubernetes Indexed Job array, how to run its missing indices there.
    Exit status 0 when every shard is complete, 1 otherwise.
    """

    from .executors.indexed import SCHEDULERS, rerun_advice
    from .output.job_record import JobRecord
    from .output.status import array_ranges, array_size, array_tasks, shard_states
    from .storage import output_folder

    try:
        with output_folder(output_dir) as out:
            states = shard_states(out)
            tasks = array_tasks(out, states)
            kind = JobRecord.require(out).executor_kind
            size = array_size(out)
    except BatchRunnerError as e:
        _fail(e)
    click.echo(f"{'shard':>12}  {'state':<9} {'rows':>8} {'errors':>7}")
    for s in states:
        click.echo(f"{s.shard.label:>12}  {s.state:<9} {s.rows:>8} {s.errors:>7}")
    todo = [s.shard.index for s in states if s.state != "complete"]
    running = [s.shard.label for s in states if s.state == "running"]
    done = len(states) - len(todo)
    click.echo(f"\n{done}/{len(states)} shards complete, {sum(s.rows for s in states)} rows, "
               f"{sum(s.errors for s in states)} errors")
    if running:
        click.echo(f"running now: {', '.join(running)} (a run holds the lock; not to resubmit)")
    if tasks and kind in SCHEDULERS:
        click.echo("\n".join(rerun_advice(kind, tasks, size)))
    elif tasks:
        click.echo(f"resubmit: --array={array_ranges(tasks)}")
    sys.exit(0 if not todo else 1)


@main.command("merge")
@click.argument("output_dir", type=OUTPUT)
def merge_cmd(output_dir: str) -> None:
    """Check every shard of OUTPUT_DIR is complete; write merged/results.parquet and merged/stats.parquet."""
    from pathlib import Path

    from .output.status import merge
    from .runner.stop import StopAtOnce
    from .storage import output_folder

    try:  # a stop ends it at once, with its temporary file removed: exit 75, or 130 (ABORTED) for a SIGINT after
        with StopAtOnce("merge stopped, its temporary files removed: "
                        "run merge again"), output_folder(output_dir) as out:
            target, rows = merge(out)
            target = Path(output_dir) / target.relative_to(out) if out != Path(output_dir) else target
    except BatchRunnerError as e:
        _fail(e)
    click.echo(f"merged {rows} rows into {shown(output_dir, target)}")


@main.command("report")
@click.argument("output_dir", type=OUTPUT)
@click.option("--to", "target", type=click.Path(file_okay=False), help="Folder for the HTML page and PNG charts (default OUTPUT_DIR/report).")
def report_cmd(output_dir: str, target: str | None) -> None:
    """Summarize OUTPUT_DIR (finished or still running) on one screen; write an HTML page and PNG charts.

    The summary: rows, errors by code, tokens, throughput, prefix-cache hit rate, GPU memory,
    duration, and a line per shard where sharded. The charts: output tokens/s and cache hit rate
    per batch over time, output-length distribution, rows by outcome.
    """
    from pathlib import Path

    from .observe.report import write_report
    from .storage import output_folder

    try:
        with output_folder(output_dir) as out:
            summary, page = write_report(out, Path(target) if target else None,
                                         output_dir if out != Path(output_dir) else None)
            page = Path(output_dir) / page.relative_to(out) if page.is_relative_to(out) else page
    except BatchRunnerError as e:
        _fail(e)
    click.echo(summary)
    click.echo(f"\n{'report':>12}  {shown(output_dir, page)} (charts beside it as PNG)")


def entry() -> None:
    """The console script: run the CLI, shut the engine down, and exit without waiting on
    interpreter teardown (seen on the GPU build: the process hung for minutes after its last write)."""
    from .runner.stop import StoppedBeforeRun, exit_at_once_on_stop, own_process, stop_before_run

    own_process()
    stop_before_run()
    code = 0
    try:
        main()
    except StoppedBeforeRun as e:
        click.echo(f"batch-run: {e} received before the run began; nothing to save. "
                   "Rerun (or requeue) to resume", err=True)
        code = int(ExitStatus.INTERRUPTED)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        from .engines import shutdown_engines

        exit_at_once_on_stop(code)  # a stop during the engine's teardown ends with this status
        shutdown_engines()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
