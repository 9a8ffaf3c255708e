"""The job's rows in token counts, for sizing the engine (``engines.sizing``): the first rows of the
input rendered and tokenized as the run will, their prompt tokens and their max_tokens averaged.

A sample, not the whole input: rendering every row of a large input before the engine starts would
delay the start by as much again as the run's own rendering; the means of the first thousand rows
are what the sizing needs (an input sorted by length misleads it, and an explicit
engine.max_num_seqs is the way out).
"""

from __future__ import annotations

from ..config import JobSpec
from ..engines.sizing import SAMPLE_ROWS, RowTokens
from ..errors import RowError
from .prompts import PromptRenderer
from .readers import INVALID, iter_rows
from .sampling import RowSampling

CHUNK = 256  # rows rendered per tokenizer call


def row_tokens(job: JobSpec, renderer: PromptRenderer, sample: int = SAMPLE_ROWS) -> RowTokens | None:
    """Means over the first ``sample`` rows that render (rows that fail are left out: they run as
    error rows); None where none does."""
    sampling = RowSampling(job.sampling, openai=job.input.format == "openai")
    counted = prompt = wanted = 0
    chunk: list[dict] = []

    def flush() -> None:
        nonlocal counted, prompt, wanted
        if not chunk:
            return
        wants = []
        for data in chunk:
            try:
                wants.append(int(sampling.values(data)["max_tokens"]))
            except (RowError, TypeError, ValueError):
                wants.append(job.sampling.max_tokens)
        for r in renderer.render_many(chunk, wants):
            if not isinstance(r, RowError):
                counted, prompt, wanted = counted + 1, prompt + len(r.token_ids), wanted + r.max_tokens
        chunk.clear()

    for row in iter_rows(job.input):
        if INVALID not in row.data:
            chunk.append(row.data)
        if len(chunk) == CHUNK or row.index + 1 >= sample:
            flush()
        if row.index + 1 >= sample:
            break
    flush()
    if not counted:
        return None
    s = job.sampling  # every row runs to its max_tokens: nothing ends it sooner
    exact = s.ignore_eos and not s.stop and not {"ignore_eos", "stop"} & set(s.columns) and job.input.format != "openai"
    return RowTokens(counted, prompt / counted, wanted / counted, s.n, exact)
