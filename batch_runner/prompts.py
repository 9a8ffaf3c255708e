"""Render rows into token ids through the model's chat template.

Every request starts with the byte-identical rendered system prompt, so vLLM's prefix cache
computes it once. Row values are passed to the user template as data: Jinja substitutes them, it
never evaluates them, and the sandbox keeps the job's own template away from Python internals.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from .config import PromptSpec
from .errors import JobError, RowError

_TRUNCATION_MARGIN = 4  # tokens; re-tokenizing cut text can merge a token or two differently


@dataclass(frozen=True)
class RenderedPrompt:
    token_ids: list[int]
    prefix_key: str  # rows with equal keys share their rendered system prompt
    max_tokens: int
    adjustment: str | None  # what on_too_long changed, if anything


def _check_value(column: str, value: Any) -> None:
    if value is None:
        raise RowError("null_value", f"column '{column}' is null")
    if isinstance(value, (bytes, bytearray)):
        raise RowError("invalid_value", f"column '{column}' holds binary data, not text")
    if isinstance(value, float) and value != value:
        raise RowError("null_value", f"column '{column}' is NaN")


class PromptRenderer:
    """Turns one input row into a ``RenderedPrompt``, or raises ``RowError``."""

    def __init__(self, spec: PromptSpec, tokenizer, max_model_len: int, max_tokens: int):
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens
        env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            self._template = env.from_string(spec.template)
            self.columns = sorted(meta.find_undeclared_variables(env.parse(spec.template)))
        except jinja2.TemplateSyntaxError as e:
            raise JobError(f"prompt.template, line {e.lineno}: template syntax error: {e.message}") from e
        if spec.system_column:
            self.columns = sorted({*self.columns, spec.system_column})

    def system_for(self, row: dict[str, Any]) -> str | None:
        if self.spec.system_column:
            value = row.get(self.spec.system_column)
            if value is None:
                raise RowError("missing_column", f"column '{self.spec.system_column}' (prompt.system_column) is missing or null")
            if not isinstance(value, str):
                raise RowError("invalid_value", f"column '{self.spec.system_column}' must be text, got {type(value).__name__}")
            return value
        return self.spec.system

    def prefix_key(self, row: dict[str, Any]) -> str:
        """A short key equal for rows that share a system prompt; cheap, for grouping."""
        try:
            system = self.system_for(row) or ""
        except RowError:
            system = ""
        return hashlib.blake2b(system.encode(), digest_size=8).hexdigest()

    def user_text(self, row: dict[str, Any]) -> str:
        for column in self.columns:
            if column not in row:
                raise RowError("missing_column", f"the template needs column '{column}', which this row lacks")
            _check_value(column, row[column])
        try:
            return self._template.render(**row)
        except jinja2.TemplateError as e:
            raise RowError("template_error", f"{type(e).__name__}: {e}") from e

    def chat_text(self, system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.spec.chat_template)

    def encode(self, text: str) -> list[int]:
        # The chat template already holds the special tokens (BOS...): add none twice.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, row: dict[str, Any]) -> RenderedPrompt:
        result = self.render_many([row])[0]
        if isinstance(result, RowError):
            raise result
        return result

    def render_many(self, rows: list[dict[str, Any]]) -> list[RenderedPrompt | RowError]:
        """Render a batch; the tokenizer encodes all texts in one (parallel) call."""
        out: list[RenderedPrompt | RowError | None] = [None] * len(rows)
        parts: list[tuple[int, str | None, str]] = []
        for i, row in enumerate(rows):
            try:
                parts.append((i, self.system_for(row), self.user_text(row)))
            except RowError as e:
                out[i] = e
        texts = [self.chat_text(system, user) for _, system, user in parts]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for (i, system, user), ids in zip(parts, encoded):
            key = self.prefix_key(rows[i])
            if self.max_model_len - len(ids) >= self.max_tokens:
                out[i] = RenderedPrompt(ids, key, self.max_tokens, None)
                continue
            try:
                out[i] = self._fit(system, user, ids, key)
            except RowError as e:
                e.prompt_tokens = len(ids)
                out[i] = e
        return out  # type: ignore[return-value]

    def _fit(self, system: str | None, user: str, ids: list[int], key: str) -> RenderedPrompt:
        """Apply prompt.on_too_long to a prompt that leaves too little room for max_tokens."""
        n, limit, want = len(ids), self.max_model_len, self.max_tokens
        if self.spec.on_too_long == "shrink" and n < limit:
            return RenderedPrompt(ids, key, limit - n, f"max_tokens lowered from {want} to {limit - n}")
        if self.spec.on_too_long == "truncate":
            user_ids = self.encode(user)
            cut = n + want - limit + _TRUNCATION_MARGIN
            if cut < len(user_ids):
                kept = self.tokenizer.decode(user_ids[: len(user_ids) - cut])
                new_ids = self.encode(self.chat_text(system, kept))
                if len(new_ids) + want <= limit:
                    return RenderedPrompt(new_ids, key, want, f"prompt truncated from {n} to {len(new_ids)} tokens")
        raise RowError("prompt_too_long",
                       f"{n} prompt tokens + max_tokens {want} exceed max_model_len {limit}")
