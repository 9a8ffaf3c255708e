"""Each row's sampling: the job's sampling section, then the row's own values.

A row's values come from columns named in ``sampling.columns`` (and, for an OpenAI batch file, from
its body). They stay plain values here; the engine builds vLLM's parameters from them and judges
them row by row: a value it rejects makes an error row (``invalid_sampling``), not a failed job.
"""

from __future__ import annotations

from typing import Any

from ..config import SamplingSpec
from ..engines.vllm_engine import rejections, sampling_params
from ..errors import JobError, RowError
from .openai_batch import check_request

OPENAI_COLUMN = "sampling"  # the column an OpenAI batch row keeps its body's sampling fields in


def base_values(spec: SamplingSpec) -> dict[str, Any]:
    """The job's sampling section as ``SamplingParams`` keywords (plus ``json_schema``)."""
    values = spec.model_dump(exclude={"extra", "top_k", "stop", "columns", "json_schema"})
    if spec.top_k is not None:
        values["top_k"] = spec.top_k
    values["stop"] = spec.stop or None
    if spec.json_schema is not None:
        values["json_schema"] = spec.json_schema
    values.update(spec.extra)
    return values



class RowSampling:
    """Sampling values per row, over the job's defaults."""

    def __init__(self, spec: SamplingSpec, openai: bool = False):
        self.base = base_values(spec)
        self.columns = dict(spec.columns)
        self.openai = openai

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's sampling values; ``RowError`` if its own values are not a mapping."""
        own: dict[str, Any] = {}
        if self.openai:
            check_request(row)  # a line that cannot run as written (named field, other endpoint)
            own.update(row.get(OPENAI_COLUMN) or {})
        for field, column in self.columns.items():
            if row.get(column) is not None:
                own[field] = row[column]
        if "max_tokens" in own and not (isinstance(own["max_tokens"], int) and own["max_tokens"] > 0):
            raise RowError("invalid_sampling", f"max_tokens must be a positive integer, got {own['max_tokens']!r}")
        return self.base | own

def check_sampling(spec: SamplingSpec) -> None:
    """The job's own sampling values; a bad one is a ``JobError``, found before anything starts."""
    try:
        sampling_params(base_values(spec))
    except rejections() as e:
        raise JobError(f"sampling: {e}") from e
