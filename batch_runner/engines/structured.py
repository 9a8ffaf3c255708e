"""JSON output: vLLM constrains generation to the schema; here the result is parsed and checked.

Constrained decoding can still end early (max_tokens reached mid-object), so nothing is trusted:
a sample that does not parse, or parses but fails the schema, marks the row with an error code.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import RowError


def check_output(texts: list[str], schema: dict[str, Any]) -> tuple[str | None, RowError | None]:
    """(the first sample's value as canonical JSON text, or None; the first problem, or None)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    first = None
    for i, text in enumerate(texts):
        which = f"sample {i}: " if len(texts) > 1 else ""
        try:
            value = json.loads(text)
        except ValueError as e:
            return first, RowError("invalid_json", f"{which}output is not JSON ({e})")
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            return first, RowError("schema_mismatch", f"{which}output does not match the schema at {path}: {error.message}")
        if i == 0:
            first = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return first, None

def check_schema(schema: Any) -> None:
    import jsonschema

    if not isinstance(schema, dict):
        raise ValueError(f"json_schema must be a JSON object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"json_schema is not a valid JSON schema: {e.message}") from e
