"""Stage 3: a completion (or a row's error) to its typed result row, with the JSON-schema check."""

from __future__ import annotations

from typing import Any

from ..engines.structured import check_output
from ..errors import RowError
from ..records import Completion, Request, ResultRow


def error_result(row_id: str, batch: int, kept: dict[str, Any], err: RowError) -> ResultRow:
    """The result of a row that never ran, or that the engine rejected."""
    return ResultRow(id=row_id, batch=batch, kept=kept, finish_reason="error",
                     prompt_tokens=getattr(err, "prompt_tokens", None), error_code=err.code,
                     error=f"{err.code}: {err.message}")


def completed_result(row_id: str, kept: dict[str, Any], request: Request, c: Completion) -> ResultRow:
    """The result of a finished request; an output that fails the job's JSON schema is an error row
    that keeps its text."""
    parsed, error = (check_output([s.text for s in c.samples], request.json_schema)
                     if request.json_schema is not None else (None, None))
    return ResultRow(
        id=row_id, batch=request.batch, kept=kept, output=c.text, finish_reason=c.finish_reason,
        prompt_tokens=c.prompt_tokens, cached_prompt_tokens=c.cached_prompt_tokens, output_tokens=c.output_tokens,
        error_code=error.code if error else None, error=f"{error.code}: {error.message}" if error else None,
        adjustment=request.adjustment, json=parsed,
        samples=[vars(s) for s in c.samples] if len(c.samples) > 1 else None)
