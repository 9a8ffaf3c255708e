"""``batch-run estimate``: how long the whole job takes, in hours, GPU-hours and money, and which
Slurm array fits it, before it is submitted.

Two measurements: the pre-flight's token counts of the whole input (every row rendered and
tokenized, its max_tokens settled), and one trial on the job's first rows (``trials.py``), or
``tune``'s best trial. Generation time scales with the output tokens: the whole input's expected
output (its max_tokens, times the share of them the trial's rows used) over the trial's, times the
trial's generation time. Each task of an array pays one engine start, the trial's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import JobSpec
from ..errors import RowError
from ..inputs.prompts import PromptRenderer
from ..inputs.readers import iter_rows
from ..inputs.sampling import RowSampling
from .trials import TrialResult

CHUNK = 256
MARGIN = 1.25  # --time suggested over the expected time of a task
# One run of a job is not the next: on an H200 the same 2,000-row trial ran at 21,687 and 30,632
# output tok/s on one machine, and four estimates came to 0.82x-1.22x of the run they foretold.
SPREAD = (f"runs of one job vary: on an H200, estimates came to 0.82x-1.22x of the measured run "
          f"(a Slurm --time suggested here allows {MARGIN - 1:.0%} over)")


@dataclass
class InputTokens:
    rows: int = 0
    prompt_tokens: int = 0
    max_output_tokens: int = 0  # the sum of the rows' max_tokens: an upper bound of the output
    sample_max_output_tokens: int = 0  # the same over the trial's rows (the first ``sample`` rows)


def count_tokens(job: JobSpec, renderer: PromptRenderer, sample: int) -> InputTokens:
    """Every row of the input rendered and tokenized (rows that fail are left out of the counts)."""
    counts, sampling = InputTokens(), RowSampling(job.sampling, openai=job.input.format == "openai")
    chunk: list[dict] = []

    def flush() -> None:
        wants = []
        for data in chunk:
            try:
                wants.append(sampling.values(data)["max_tokens"])
            except RowError:
                wants.append(1)
        for r in renderer.render_many(chunk, wants):
            if isinstance(r, RowError):
                continue
            counts.prompt_tokens += len(r.token_ids)
            counts.max_output_tokens += r.max_tokens
            if counts.rows < sample:
                counts.sample_max_output_tokens += r.max_tokens
            counts.rows += 1
        chunk.clear()

    for row in iter_rows(job.input):
        chunk.append(row.data)
        if len(chunk) == CHUNK:
            flush()
    flush()
    return counts


@dataclass
class Estimate:
    rows: int
    prompt_tokens: int
    output_tokens: int  # expected
    generation_h: float  # on one engine
    start_h: float  # one engine start
    devices_per_engine: int  # GPUs of one engine (tensor_parallel_size); 1 on the CPU
    price: float | None  # per GPU-hour
    tasks: int | None = None
    time_limit_h: float | None = None

    @property
    def gpu_hours(self) -> float:
        return self.generation_h * self.devices_per_engine

    @property
    def gpu_hours_with_starts(self) -> float:
        return (self.generation_h + (self.tasks or 1) * self.start_h) * self.devices_per_engine

    @property
    def rows_per_gpu_hour(self) -> float:
        return self.rows / self.gpu_hours if self.gpu_hours else 0.0

    def cost(self, with_starts: bool = True) -> float | None:
        if self.price is None:
            return None
        return (self.gpu_hours_with_starts if with_starts else self.gpu_hours) * self.price

    @property
    def task_h(self) -> float:
        return self.generation_h / (self.tasks or 1) + self.start_h


def estimate(tokens: InputTokens, trial: TrialResult, devices: int, price: float | None,
             tasks: int | None = None, time_limit_h: float | None = None) -> Estimate:
    used = trial.output_tokens / tokens.sample_max_output_tokens if tokens.sample_max_output_tokens else 1.0
    output = tokens.max_output_tokens * min(1.0, used)
    generation_s = trial.generation_s * output / trial.output_tokens if trial.output_tokens else 0.0
    e = Estimate(tokens.rows, tokens.prompt_tokens, int(output), generation_s / 3600, trial.start_s / 3600,
                 devices, price, tasks, time_limit_h)
    if tasks is None and time_limit_h is not None:  # as many tasks as the time limit needs
        room = time_limit_h / MARGIN - e.start_h
        e.tasks = max(1, math.ceil(e.generation_h / room)) if room > 0 else None
    return e


def wave_note(trial_rows: int, max_num_seqs: int, input_rows: int) -> str | None:
    """A trial of fewer than two engine-fulls of rows runs as one wave, whose tail runs below full
    concurrency: its pace is below the whole job's, and the estimate leans high. Measured: on an
    H200, 20,000 rows at max_num_seqs 512 estimated from 500 rows at 1.22x and 1.03x the measured
    time, from 1,024 rows at 0.90x and 0.82x; on the CPU Quick start (max_num_seqs 64), from 60 rows
    1.25x, 160 rows 1.06x.
    No note when the trial was the whole input: then it is the job itself."""
    if trial_rows >= 2 * max_num_seqs or trial_rows >= input_rows:
        return None
    return (f"note: the trial's {trial_rows:,} rows are fewer than twice max_num_seqs ({max_num_seqs:,}): they ran "
            f"as one wave, slower at its end than a full engine, so this estimate leans high; "
            f"--rows {2 * max_num_seqs:,} or more (the default) measures the engine's full pace")


def _hms(hours: float) -> str:
    s = int(math.ceil(hours * 3600 / 300) * 300)  # whole 5 minutes
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:00"


def report(e: Estimate, trial: TrialResult, gpu: bool) -> str:
    unit = "GPU-hours" if gpu else "engine-hours (CPU)"
    lines = [
        f"input: {e.rows:,} rows, {e.prompt_tokens:,} prompt tokens, about {e.output_tokens:,} output tokens",
        f"trial: {trial.requests:,} rows in {trial.generation_s:.1f} s of generation "
        f"({trial.output_tok_s:,.1f} output tok/s, cache hit {trial.cache_hit_rate:.0%}), engine start {trial.start_s:.0f} s",
        f"generation: {e.generation_h:.2f} h ({e.generation_h * 3600:,.0f} s) on one engine "
        f"({e.devices_per_engine} {'GPUs' if gpu else 'device'} per engine)",
        f"  {SPREAD}",
        f"{unit}: {e.gpu_hours:.2f} generating, {e.gpu_hours_with_starts:.2f} with engine starts "
        f"({e.tasks or 1} task{'s' if (e.tasks or 1) > 1 else ''})",
        f"rows per hour per {'GPU' if gpu else 'engine'}: {e.rows_per_gpu_hour:,.0f}",
    ]
    if e.price is not None:
        lines.append(f"cost at {e.price:g} per {'GPU-hour' if gpu else 'engine-hour'}: {e.cost(False):,.2f} "
                     f"generating, {e.cost():,.2f} with engine starts")
    if e.tasks:
        fits = e.time_limit_h is None or e.task_h * MARGIN <= e.time_limit_h
        limit = f" in a {_hms(e.time_limit_h)} limit: {'fits' if fits else 'does NOT fit'}" if e.time_limit_h else ""
        lines.append(f"Slurm: {e.tasks} task{'s' if e.tasks > 1 else ''} of about {e.task_h * 60:.0f} min each{limit}")
        lines.append(f"  sbatch --array=0-{e.tasks - 1} --time={_hms(e.task_h * MARGIN)} jobs/slurm/batch-run.sbatch JOB.yaml")
    return "\n".join(lines)
