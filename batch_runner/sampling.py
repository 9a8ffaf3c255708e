"""Each row's sampling: the job's sampling section, then the row's own values.

A row's values come from columns named in ``sampling.columns`` (and, for an OpenAI batch file, from
its body). vLLM judges them row by row: a value it rejects makes an error row (``invalid_sampling``),
not a failed job. Parameters are built once per distinct set of values.
"""

from __future__ import annotations

import json
from typing import Any

from .config import SamplingSpec
from .errors import JobError, RowError

OPENAI_COLUMN = "sampling"  # the column an OpenAI batch row keeps its body's sampling fields in


def rejections() -> tuple[type[Exception], ...]:
    """The exception types vLLM raises for invalid parameters (newer versions add their own)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # older vLLM: ValueError only
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMValidationError)


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


def build(values: dict[str, Any]):
    """A ``vllm.SamplingParams``; raises what vLLM (or the JSON schema check) raises."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    values = dict(values)
    schema = values.pop("json_schema", None)
    if schema is not None:
        check_schema(schema)
        values["structured_outputs"] = StructuredOutputsParams(json=schema)
    if isinstance(values.get("stop"), str):
        values["stop"] = [values["stop"]]
    params = SamplingParams(**values)
    params.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, no streaming
    return params


def check_schema(schema: Any) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise ValueError(f"json_schema must be a JSON object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"json_schema is not a valid JSON schema: {e.message}") from e


def sampling_params(spec: SamplingSpec, max_tokens: int | None = None):
    """The job's own parameters; a bad value is a ``JobError`` (found before anything starts)."""
    values = base_values(spec) | ({"max_tokens": max_tokens} if max_tokens is not None else {})
    try:
        return build(values)
    except rejections() as e:
        raise JobError(f"sampling: {e}") from e


class RowSampling:
    """Sampling values and parameters per row, over the job's defaults."""

    def __init__(self, spec: SamplingSpec, openai: bool = False):
        self.base = base_values(spec)
        self.columns = dict(spec.columns)
        self.openai = openai
        self._cache: dict[str, Any] = {}

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's sampling values; ``RowError`` if its own values are not a mapping."""
        own: dict[str, Any] = {}
        if self.openai:
            own.update(row.get(OPENAI_COLUMN) or {})
        for field, column in self.columns.items():
            if row.get(column) is not None:
                own[field] = row[column]
        if "max_tokens" in own and not (isinstance(own["max_tokens"], int) and own["max_tokens"] > 0):
            raise RowError("invalid_sampling", f"max_tokens must be a positive integer, got {own['max_tokens']!r}")
        return self.base | own

    def params(self, values: dict[str, Any], max_tokens: int):
        """Parameters for these values, with max_tokens as rendering settled it."""
        values = values | {"max_tokens": max_tokens}
        key = json.dumps(values, sort_keys=True, default=str)
        if key not in self._cache:
            try:
                self._cache[key] = build(values)
            except rejections() as e:
                raise RowError("invalid_sampling", str(e)) from e
        return self._cache[key]
