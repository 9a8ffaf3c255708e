"""Stage 3: a completion (or a row's error) to its typed result row, with the reasoning split off
(model.reasoning_parser) and the JSON-schema check of the answer."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ..engines.reasoning import ReasoningSplitter
from ..engines.structured import check_output
from ..errors import RowError
from ..records import Completion, Request, ResultRow, Sample


def error_result(row_id: str, batch: int, kept: dict[str, Any], err: RowError) -> ResultRow:
    """The result of a row that never ran, or that the engine rejected."""
    return ResultRow(id=row_id, batch=batch, kept=kept, finish_reason="error",
                     prompt_tokens=getattr(err, "prompt_tokens", None), error_code=err.code,
                     error=f"{err.code}: {err.message}")


def split_samples(samples: list[Sample], reasoning: ReasoningSplitter | None) -> list[Sample]:
    """Each sample's text as its answer, with its reasoning beside it; as they are without a parser."""
    if reasoning is None:
        return samples
    return [replace(s, text=split.answer, reasoning=split.reasoning)
            for s in samples for split in [reasoning.split(s.text)]]


def _sample_row(s: Sample, reasoning: bool) -> dict[str, Any]:
    row = {"text": s.text, "finish_reason": s.finish_reason, "output_tokens": s.output_tokens}
    return row | {"reasoning": s.reasoning} if reasoning else row


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def logprobs_content(sample: Sample, top: int) -> list[dict[str, Any]]:
    """A sample's logprobs as OpenAI's ChatCompletion ``choices[].logprobs.content``: each token with
    its ``top`` best candidates (vLLM also returns the sampled token when it ranks below them)."""
    return [{"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token),
             "top_logprobs": [{"token": c[0], "logprob": c[1], "bytes": _bytes(c[0])}
                              for c in t.top if c[2] <= top][:top]}
            for t in sample.logprobs or ()]


def logprobs_json(samples: list[Sample], top: int | None) -> str | None:
    """The ``logprobs`` column: per sample, its logprobs content; None where the row did not ask."""
    if top is None or all(s.logprobs is None for s in samples):
        return None
    return json.dumps([logprobs_content(s, top) for s in samples], ensure_ascii=False)


def completed_result(row_id: str, kept: dict[str, Any], request: Request, c: Completion,
                     reasoning: ReasoningSplitter | None = None) -> ResultRow:
    """The result of a finished request; an output (its answer, with a reasoning parser) that fails
    the job's JSON schema is an error row that keeps its text. Every sample of n > 1 carries its own
    reasoning; the row's ``output`` and ``reasoning`` are the first sample's."""
    samples = split_samples(c.samples, reasoning)
    parsed, error = (check_output([s.text for s in samples], request.json_schema)
                     if request.json_schema is not None else (None, None))
    return ResultRow(
        id=row_id, batch=request.batch, kept=kept, output=samples[0].text, reasoning=samples[0].reasoning,
        finish_reason=c.finish_reason, prompt_tokens=c.prompt_tokens, cached_prompt_tokens=c.cached_prompt_tokens,
        output_tokens=c.output_tokens,
        error_code=error.code if error else None, error=f"{error.code}: {error.message}" if error else None,
        adjustment=request.adjustment, json=parsed,
        samples=[_sample_row(s, reasoning is not None) for s in samples] if len(samples) > 1 else None,
        logprobs=logprobs_json(c.samples, request.sampling.get("logprobs")))
