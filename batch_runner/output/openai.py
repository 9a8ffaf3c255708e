"""OpenAI batch files: lines in (``{custom_id, method, url, body}``), lines out.

In: each line becomes a row with ``custom_id`` (the id), ``url``, ``messages`` (chat) or ``prompt``
(completions), ``model``, and ``sampling``, the body's sampling fields under batch-run's names.
A line that is not a request at all (no custom_id, another endpoint) is an input error found by
the pre-flight pass; a request whose body is wrong becomes an error row.

Out: ``openai/results.jsonl`` holds one line per answered row in the Batch API's output shape
(``response.body`` a chat.completion or text_completion with ``choices`` and ``usage``), and
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
def _stable_id(prefix: str, custom_id: str) -> str:
    return f"{prefix}_{hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()}"


def _choices(row: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    samples = row.get("samples") or [{"text": row["output"], "finish_reason": row["finish_reason"],
                                      **({"reasoning": row["reasoning"]} if "reasoning" in row else {})}]
    choices = []
    for i, sample in enumerate(samples):
        choice = {"index": i, "finish_reason": sample["finish_reason"], "logprobs": None}
        # model.reasoning_parser: the reasoning as vLLM's server gives it, beside the answer
        thought = {"reasoning_content": sample["reasoning"]} if "reasoning" in sample else {}
        choice |= {"message": {"role": "assistant", "content": sample["text"], **thought}} if chat \
            else {"text": sample["text"], **thought}
        choices.append(choice)
    return choices


def response_line(row: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    chat = row.get("url", CHAT) == CHAT
    prompt, completion = row["prompt_tokens"] or 0, row["output_tokens"] or 0
    body = {"id": _stable_id("chatcmpl" if chat else "cmpl", row["id"]),
            "object": "chat.completion" if chat else "text_completion", "created": created, "model": model,
            "choices": _choices(row, chat),
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    return {"id": _stable_id("batch_req", row["id"]), "custom_id": row["id"],
            "response": {"status_code": 200, "request_id": _stable_id("req", row["id"]), "body": body}, "error": None}


def error_line(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": _stable_id("batch_req", row["id"]), "custom_id": row["id"], "response": None,
            "error": {"code": row["error_code"], "message": row["error"].removeprefix(f"{row['error_code']}: ")}}


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

    created = int(time.time())
    counts = [0, 0]

    def write(tmp_ok: str, tmp_err: str) -> None:
        with open(tmp_ok, "w") as ok, open(tmp_err, "w") as err:
            for row in _rows(out / "results"):
                failed = row["error_code"] is not None
                line = error_line(row) if failed else response_line(row, model, created)
                (err if failed else ok).write(json.dumps(line, ensure_ascii=False) + "\n")
                counts[failed] += 1

    # Two files, each atomic: the errors file is written inside the results file's write.
    folder = out / "openai"
    atomic_write(folder / "results.jsonl",
                 lambda tmp_ok: atomic_write(folder / "errors.jsonl", lambda tmp_err: write(tmp_ok, tmp_err)))
    return counts[0], counts[1]
