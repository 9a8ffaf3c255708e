"""OpenAI Batch API input: a request line's body as a row, its messages in the chat template's
format, and its sampling values under batch-run's names.

Every field the ``openai`` package's chat and completion request types can carry is either applied
or makes that row an error that names it (``body.top_logprobs: ...``), so that nothing is dropped
silently and vLLM never sees a value of the wrong type (a bool ``logprobs`` reaching vLLM's engine
core kills its input thread). A line for another endpoint (``/v1/embeddings``...) is an error row too.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import JobError, RowError

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
REQUEST_ERROR = "request_error"  # a row's [code, message] when its request cannot run as written
TOOLS = "tools"  # the row column holding a chat's tools, for the chat template

INVALID, UNSUPPORTED = "invalid_request", "unsupported_request"

# Body fields that say nothing about what is generated.
_IGNORED = {"model", "user", "metadata", "store", "stream", "stream_options", "service_tier", "safety_identifier",
            "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "parallel_tool_calls"}
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# vLLM's own request extensions (as its server takes them), SamplingParams fields of 0.26 and 0.32
# alike, with their types: a value of another type would pass SamplingParams and kill the engine core.
_VLLM_EXTRAS = {"top_k": int, "min_tokens": int, "min_p": float, "repetition_penalty": float, "ignore_eos": bool,
                "skip_special_tokens": bool, "include_stop_str_in_output": bool,
                "spaces_between_special_tokens": bool, "stop_token_ids": list}
_CHAT_ONLY = {"messages", "tools", "tool_choice", "logprobs", "top_logprobs", "max_completion_tokens",
              "response_format", "modalities"}
_COMPLETION_ONLY = {"prompt", "logprobs", "echo", "suffix", "best_of"}
_TEXT_PARTS = {"text", "refusal"}
_MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id"}


def _fail(code: str, field: str, message: str) -> RowError:
    return RowError(code, f"body.{field}: {message}")


def _int(body: dict[str, Any], key: str, low: int = 0) -> int | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        raise _fail("invalid_sampling", key, f"must be an integer of at least {low}, got {value!r}")
    return value


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise _fail("invalid_sampling", key, f"must be a number, got {value!r}")
    return None if value is None else float(value)


def _extra(body: dict[str, Any], key: str) -> Any:
    """One of vLLM's extensions, of its type."""
    kind = _VLLM_EXTRAS[key]
    if kind is int:
        return _int(body, key, -1)
    if kind is float:
        return _number(body, key)
    value = body.get(key)
    if kind is bool and value is not None and not isinstance(value, bool):
        raise _fail("invalid_sampling", key, f"must be true or false, got {value!r}")
    if kind is list and value is not None and not (
            isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise _fail("invalid_sampling", key, f"must be a list of token ids, got {value!r}")
    return value


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _fail("invalid_sampling", "stop", f"must be a string or a list of strings, got {value!r}")
    return stops


def _logit_bias(value: Any) -> dict[int, float] | None:
    if value is None:
        return None
    try:
        return {int(k): float(v) for k, v in value.items() if not isinstance(v, bool)}
    except (AttributeError, TypeError, ValueError):
        raise _fail("invalid_sampling", "logit_bias", "must map token ids to numbers") from None


def _response_format(value: Any) -> dict[str, Any] | None:
    """OpenAI's response_format as a JSON schema (None for plain text)."""
    kind = value.get("type") if isinstance(value, dict) else None
    if value is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    schema = (value.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
    if not isinstance(schema, dict):
        raise _fail(INVALID, "response_format", "must be {type: text}, {type: json_object} or "
                                                "{type: json_schema, json_schema: {schema: {...}}}")
    return schema


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """vLLM's ``logprobs`` (how many top candidates beside each sampled token's own; 0: none) as
    vLLM's server maps them: chat's ``logprobs: true`` with ``top_logprobs: k`` is k, completions'
    ``logprobs`` is the count itself."""
    if not chat:
        return _int(body, "logprobs")
    asked, top = body.get("logprobs"), _int(body, "top_logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise _fail("invalid_sampling", "logprobs", f"must be true or false, got {asked!r}")
    if top and not asked:
        raise _fail("invalid_sampling", "top_logprobs", "needs logprobs: true")
    if top is not None and top > 20:
        raise _fail("invalid_sampling", "top_logprobs", f"must be at most 20, got {top}")
    return (top or 0) if asked else None


def _refuse(body: dict[str, Any], chat: bool) -> None:
    """Fields that change what the model would be asked, which batch-run cannot honour."""
    if body.get("modalities") not in (None, ["text"]):
        raise _fail(UNSUPPORTED, "modalities", "batch-run generates text only")
    if not chat:
        if body.get("echo"):
            raise _fail(UNSUPPORTED, "echo", "echoing the prompt is not supported")
        if body.get("suffix"):
            raise _fail(UNSUPPORTED, "suffix", "a suffix (insertion) is not supported")
        if body.get("best_of") not in (None, 1, body.get("n")):
            raise _fail(UNSUPPORTED, "best_of", "vLLM's engine has no best_of; use n")
    allowed = _IGNORED | set(_NUMBERS) | set(_VLLM_EXTRAS) | (_CHAT_ONLY if chat else _COMPLETION_ONLY) | {
        "max_tokens", "seed", "stop", "n", "logit_bias", "modalities"}
    for key, value in body.items():
        if key not in allowed and value is not None:
            raise _fail(UNSUPPORTED, key, f"batch-run does not apply it to {'chat' if chat else 'completion'} "
                                          "requests; leave it out")


def sampling_from_body(body: dict[str, Any], chat: bool = True) -> dict[str, Any]:
    """The body's generation fields under batch-run's sampling names (vLLM's ``SamplingParams``
    keywords, plus ``json_schema``); ``RowError`` naming the field where one cannot apply."""
    _refuse(body, chat)
    out: dict[str, Any] = {key: _extra(body, key) for key in _VLLM_EXTRAS}
    max_tokens = _int(body, "max_completion_tokens", 1) if chat else None
    out["max_tokens"] = max_tokens if max_tokens is not None else _int(body, "max_tokens", 1)
    out |= {key: _number(body, key) for key in _NUMBERS}
    out |= {"seed": _int(body, "seed", -2**63), "n": _int(body, "n", 1), "stop": _stop(body.get("stop")),
            "logprobs": _logprobs(body, chat), "logit_bias": _logit_bias(body.get("logit_bias"))}
    if chat:
        out["json_schema"] = _response_format(body.get("response_format"))
    return {key: value for key, value in out.items() if value is not None}


# -- messages -----------------------------------------------------------------------------------------
def _content(content: Any, where: str) -> str:
    """A message's content as text: a list of parts becomes its text parts joined by newlines (as
    vLLM's server joins them for a string-content chat template)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise _fail(INVALID, where, f"must be text or a list of content parts, got {type(content).__name__}")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS:
            raise _fail(UNSUPPORTED, f"{where}[{i}]", f"a {kind!r} part: batch-run sends text only to a "
                                                      "text model (image, audio and file parts cannot be run)")
        text = part.get(kind)
        if not isinstance(text, str):
            raise _fail(INVALID, f"{where}[{i}].{kind}", "must be text")
        texts.append(text)
    return "\n".join(texts)


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant's tool calls in the chat template's format: each function's arguments as a
    mapping (OpenAI sends them as JSON text; Hugging Face templates read them as a dict)."""
    if not isinstance(calls, list):
        raise _fail(INVALID, where, "must be a list of tool calls")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _fail(UNSUPPORTED if isinstance(call, dict) and call.get("type") not in (None, "function")
                        else INVALID, f"{where}[{i}]", "must be {id, type: function, function: {name, arguments}}")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise _fail(INVALID, f"{where}[{i}].function.arguments", "must be a JSON text") from None
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as the chat template takes them (Hugging Face's format): text content,
    ``developer`` as ``system``, tool calls and tool results passed through."""
    if not isinstance(messages, list) or not messages:
        raise _fail(INVALID, "messages", "must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            role = m.get("role") if isinstance(m, dict) else None
            raise _fail(UNSUPPORTED if role == "function" else INVALID, f"{where}.role",
                        f"{role!r}: must be system, developer, user, assistant or tool")
        extra = sorted(k for k, v in m.items() if k not in _MESSAGE_KEYS and v is not None)
        if extra:
            raise _fail(UNSUPPORTED, f"{where}.{extra[0]}", "batch-run does not apply it; leave it out")
        message = {"role": "system" if m["role"] == "developer" else m["role"],
                   "content": _content(m.get("content"), f"{where}.content")}
        if m.get("tool_calls"):
            message["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
        for key in ("name", "tool_call_id"):
            if m.get(key) is not None:
                message[key] = m[key]
        out.append(message)
    return out


def chat_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools for the chat template (``tools=`` of apply_chat_template, OpenAI's format). A
    tool_choice that forces a call is refused: batch-run does not parse tool calls out of the text."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice not in (None, "none", "auto"):
        raise _fail(UNSUPPORTED, "tool_choice", f"{choice!r}: batch-run runs 'auto' and 'none' only (it does not "
                                                "parse tool calls; the model's call comes back as its text)")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise _fail(INVALID, "tools", "must be a list of tools")
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance((tool.get("function") or {}).get("name"), str):
            raise _fail(UNSUPPORTED, f"tools[{i}]", "batch-run passes function tools only ({type: function, "
                                                    "function: {name, parameters}})")
    return tools or None


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if not isinstance(value, str):
        raise _fail(UNSUPPORTED if isinstance(value, list) else INVALID, "prompt",
                    "batch-run runs one text prompt per line")
    return value


# -- lines ------------------------------------------------------------------------------------------
def _body_row(url: str, body: dict[str, Any]) -> dict[str, Any]:
    chat = url == CHAT
    if chat:
        row = {"messages": chat_messages(body.get("messages")), TOOLS: chat_tools(body)}
    else:
        row = {"prompt": _prompt(body.get("prompt"))}
    return row | {"sampling": sampling_from_body(body, chat)}


def request_row(data: dict[str, Any], where: str) -> dict[str, Any]:
    """One input line as a row; ``JobError`` if it is not a batch request line at all. A request
    that cannot run as written (another endpoint, a field batch-run cannot apply) is a row with
    ``request_error``: its row fails, the others run."""
    custom_id, url, body = data.get("custom_id"), data.get("url"), data.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        raise JobError(f"{where}: an OpenAI batch line needs a non-empty string 'custom_id'")
    if not isinstance(url, str) or not url.startswith("/v1/"):
        raise JobError(f"{where}: url {url!r} is not an OpenAI API endpoint (/v1/...)")
    if data.get("method", "POST") != "POST":
        raise JobError(f"{where}: method {data.get('method')!r}: batch requests are POST")
    if not isinstance(body, dict):
        raise JobError(f"{where}: 'body' must be a JSON object")
    row: dict[str, Any] = {"custom_id": custom_id, "url": url, "model": body.get("model")}
    if url not in (CHAT, COMPLETIONS):
        why = f"url {url}: batch-run runs {CHAT} and {COMPLETIONS} on a text-generation model; this line is not run"
        return row | {REQUEST_ERROR: [UNSUPPORTED, why]}
    try:
        return row | _body_row(url, body)
    except RowError as e:
        return row | {REQUEST_ERROR: [e.code, e.message]}


def check_request(row: dict[str, Any]) -> None:
    """``RowError`` for a row whose request cannot run (``request_row`` found why)."""
    if row.get(REQUEST_ERROR):
        raise RowError(*row[REQUEST_ERROR])
