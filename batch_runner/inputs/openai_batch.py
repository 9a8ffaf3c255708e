"""OpenAI Batch API input: a request line's body as a row and its sampling values."""

from __future__ import annotations

from typing import Any

from ..errors import JobError

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

# Body fields that say nothing about generation; everything else must be understood or the row fails.
_IGNORED = {"model", "messages", "prompt", "user", "metadata", "store", "stream"}
_RENAMED = {"max_completion_tokens": "max_tokens"}


def _response_format(value: Any) -> dict[str, Any] | None:
    """OpenAI's response_format as a JSON schema (None for plain text)."""
    if not isinstance(value, dict) or value.get("type") in (None, "text"):
        return None
    if value["type"] == "json_object":
        return {"type": "object"}
    if value["type"] == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else {"invalid response_format": value}
    return {"invalid response_format": value}


def sampling_from_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body's generation fields under batch-run's sampling names (validated later, per row)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in _IGNORED or value is None:
            continue
        if key == "response_format":
            schema = _response_format(value)
            if schema is not None:
                out["json_schema"] = schema
        elif key == "stop":
            out["stop"] = [value] if isinstance(value, str) else value
        else:
            out[_RENAMED.get(key, key)] = value
    return out


def request_row(data: dict[str, Any], where: str) -> dict[str, Any]:
    """One input line as a row; ``JobError`` if it is not a batch request batch-run can run."""
    custom_id, url, body = data.get("custom_id"), data.get("url"), data.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        raise JobError(f"{where}: an OpenAI batch line needs a non-empty string 'custom_id'")
    if url not in (CHAT, COMPLETIONS):
        raise JobError(f"{where}: url {url!r} is not supported; batch-run runs {CHAT} and {COMPLETIONS}")
    if data.get("method", "POST") != "POST":
        raise JobError(f"{where}: method {data.get('method')!r}: batch requests are POST")
    if not isinstance(body, dict):
        raise JobError(f"{where}: 'body' must be a JSON object")
    row = {"custom_id": custom_id, "url": url, "model": body.get("model"), "sampling": sampling_from_body(body)}
    row["messages" if url == CHAT else "prompt"] = body.get("messages" if url == CHAT else "prompt")
    return row
