"""OpenAI batch files: lines in (``{custom_id, method, url, body}``), lines out.

In: each line becomes a row with ``custom_id`` (the id), ``url``, ``messages`` (chat) or ``prompt``
(completions), ``model``, and ``sampling``, the body's sampling fields under batch-run's names.
A line that is not a request at all (no custom_id, another endpoint) is an input error found by
the pre-flight pass; a request whose body is wrong becomes an error row.

Out: ``openai/results.jsonl`` holds one line per answered row in the Batch API's output shape
(``response.body`` a chat.completion or text_completion as the ``openai`` package's types read it:
``chatcmpl-``/``cmpl-`` ids, ``system_fingerprint``, ``usage`` with the cached prompt tokens, each
choice's ``logprobs`` where the request asked), and
``openai/errors.jsonl`` one line per error row (``response`` null, ``error`` {code, message}).
Together they hold every id once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..inputs.openai_batch import CHAT


# -- output -----------------------------------------------------------------------------------------
def _stable_id(prefix: str, custom_id: str, sep: str = "-") -> str:
    return f"{prefix}{sep}{hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()}"


def _completion_logprobs(content: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat-shaped logprobs content as the legacy completions' ``logprobs`` object."""
    offsets, at = [], 0
    for t in content:
        offsets.append(at)
        at += len(t["token"])
    return {"tokens": [t["token"] for t in content], "token_logprobs": [t["logprob"] for t in content],
            "top_logprobs": [{c["token"]: c["logprob"] for c in t["top_logprobs"]} for t in content],
            "text_offset": offsets}


def _choices(row: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    samples = row.get("samples") or [{"text": row["output"], "finish_reason": row["finish_reason"],
                                      **({"reasoning": row["reasoning"]} if "reasoning" in row else {})}]
    logprobs = json.loads(row["logprobs"]) if row.get("logprobs") else [None] * len(samples)
    choices = []
    for i, (sample, content) in enumerate(zip(samples, logprobs)):
        choice: dict[str, Any] = {"index": i, "finish_reason": sample["finish_reason"]}
        # model.reasoning_parser: the reasoning as vLLM's server gives it, beside the answer
        thought = {"reasoning_content": sample["reasoning"]} if "reasoning" in sample else {}
        if chat:
            choice["message"] = {"role": "assistant", "content": sample["text"], "refusal": None, **thought}
            choice["logprobs"] = None if content is None else {"content": content, "refusal": None}
        else:
            choice |= {"text": sample["text"], **thought,
                       "logprobs": None if content is None else _completion_logprobs(content)}
        choices.append(choice)
    return choices


def response_line(row: dict[str, Any], model: str, created: int, fingerprint: str) -> dict[str, Any]:
    chat = row.get("url", CHAT) == CHAT
    prompt, completion = row["prompt_tokens"] or 0, row["output_tokens"] or 0
    body = {"id": _stable_id("chatcmpl" if chat else "cmpl", row["id"]),
            "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
            "system_fingerprint": fingerprint, "choices": _choices(row, chat),
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": row.get("cached_prompt_tokens") or 0}}}
    return {"id": _stable_id("batch_req", row["id"], "_"), "custom_id": row["id"],
            "response": {"status_code": 200, "request_id": _stable_id("req", row["id"], "_"), "body": body},
            "error": None}


def error_line(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": _stable_id("batch_req", row["id"], "_"), "custom_id": row["id"], "response": None,
            "error": {"code": row["error_code"], "message": row["error"].removeprefix(f"{row['error_code']}: ")}}


def system_fingerprint(out: Path, model: str) -> str:
    """What determined the answers, as OpenAI's ``system_fingerprint``: the output's resume
    fingerprint (model, sampling, prompt...), else the model's name."""
    try:
        basis = json.loads((out / "job.json").read_text())["fingerprint_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        basis = model
    return "fp_" + hashlib.blake2b(str(basis).encode(), digest_size=6).hexdigest()


def _rows(results: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.dataset as ds

    from .parts import committed_parts

    parts = committed_parts(results)
    if not parts:
        return
    for batch in ds.dataset([str(p) for p in parts], format="parquet").to_batches():
        yield from batch.to_pylist()


def write_openai_files(out: Path, model: str) -> tuple[int, int]:
    """Write openai/results.jsonl and openai/errors.jsonl from the results; returns their line counts."""
    import time

    created, fingerprint = int(time.time()), system_fingerprint(out, model)
    counts = [0, 0]

    def write(tmp_ok: str, tmp_err: str) -> None:
        with open(tmp_ok, "w") as ok, open(tmp_err, "w") as err:
            for row in _rows(out / "results"):
                failed = row["error_code"] is not None
                line = error_line(row) if failed else response_line(row, model, created, fingerprint)
                (err if failed else ok).write(json.dumps(line, ensure_ascii=False) + "\n")
                counts[failed] += 1

    # Two files, each atomic: the errors file is written inside the results file's write.
    folder = out / "openai"
    atomic_write(folder / "results.jsonl",
                 lambda tmp_ok: atomic_write(folder / "errors.jsonl", lambda tmp_err: write(tmp_ok, tmp_err)))
    return counts[0], counts[1]
