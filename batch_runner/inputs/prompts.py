"""Render rows into token ids through the model's chat template.

Every request starts with the byte-identical rendered system prompt, so vLLM's prefix cache
computes it once. Row values are passed to the user template as data: Jinja substitutes them, it
never evaluates them, and the sandbox keeps the job's own template away from Python internals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..config import PromptSpec
from ..errors import JobError, RowError
from .template_bounds import BoundedEnvironment, RenderBounds, RenderGuard, RenderLimit, render

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


def _check_text(text: str) -> None:
    """The tokenizer takes a batch of texts; one text it cannot encode must fail only its own row."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError("invalid_value", f"the prompt holds text that is not valid Unicode ({e.reason} "
                                        f"at character {e.start})") from None


def _check_messages(value: Any, column: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value):
        raise RowError("invalid_value", f"column '{column}' must be a non-empty list of {{role, content}} messages")
    return value


class _ChatEnvironment(BoundedEnvironment, ImmutableSandboxedEnvironment):
    """A job's own chat template runs under the same bounds as its user template, in the
    environment transformers gives chat templates (apply_chat_template's globals and filters)."""


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _chat_template(source: str, guard: RenderGuard) -> jinja2.Template:
    env = _ChatEnvironment(guard, trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = env._bounded_filter("tojson", _tojson)
    env.globals.update(raise_exception=_raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise JobError(f"prompt.chat_template, line {e.lineno}: template syntax error: {e.message}") from e


def template_columns(ast: nodes.Template) -> list[str]:
    """The row columns a template reads: the names it uses but does not define. Jinja's own analysis
    takes a name set inside an ``{% if %}`` or a macro calling itself for one it reads from outside;
    any name the template assigns, loops over or defines as a macro is the template's own."""
    own = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    own |= {m.name for m in ast.find_all(nodes.Macro)}
    return sorted(meta.find_undeclared_variables(ast) - own)


class PromptRenderer:
    """Turns one input row into a ``RenderedPrompt``, or raises ``RowError``.

    A row's prompt comes from the user template (with the system prompt, through the chat
    template), from a column holding a whole chat (through the chat template), or from a column of
    raw prompt text (no chat template, as OpenAI's /v1/completions).
    """

    def __init__(self, spec: PromptSpec, tokenizer, max_model_len: int, max_tokens: int,
                 tools_column: str | None = None):
        self.spec = spec
        self.tools_column = tools_column  # a row's tools for the chat template (an OpenAI batch file's)
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens
        self._template = None
        self.columns: list[str] = []  # columns every row must have (checked by the pre-flight pass)
        self.guard = RenderGuard(RenderBounds(spec.render_timeout_s, spec.max_render_chars))
        self._chat = _chat_template(spec.chat_template, self.guard) if spec.chat_template is not None else None
        if spec.template is not None:
            env = BoundedEnvironment(self.guard, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
            try:
                self._template = env.from_string(spec.template)
                self.columns = template_columns(env.parse(spec.template))
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
            messages = row.get(self.spec.messages_column) if self.spec.messages_column else None
            if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
                    and messages[0].get("role") == "system":
                system = str(messages[0].get("content"))
        except RowError:
            system = ""
        return hashlib.blake2b(system.encode(), digest_size=8).hexdigest()

    def _text(self, row: dict[str, Any]) -> tuple[str | None, str | None, str, bool]:
        """(system, user, prompt text, whether it went through the chat template) of a row; user is
        None where there is no template."""
        spec = self.spec
        if self._template is not None:
            system, user = self.system_for(row), self.user_text(row)
            return system, user, self.chat_text(system, user), True
        messages = row.get(spec.messages_column) if spec.messages_column else None
        if messages is not None:
            messages = _check_messages(messages, spec.messages_column)
            if spec.system and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": spec.system}, *messages]
            tools = row.get(self.tools_column) if self.tools_column else None
            return None, None, self._apply_chat(messages, tools), True
        prompt = row.get(spec.prompt_column) if spec.prompt_column else None
        if prompt is None:
            wanted = " or ".join(f"'{c}'" for c in (spec.messages_column, spec.prompt_column) if c)
            raise RowError("missing_column", f"the row has no {wanted}")
        if not isinstance(prompt, str):
            raise RowError("invalid_value", f"column '{spec.prompt_column}' must be text, got {type(prompt).__name__}")
        return None, None, prompt, False

    def user_text(self, row: dict[str, Any]) -> str:
        for column in self.columns:
            if column not in row:
                raise RowError("missing_column", f"the template needs column '{column}', which this row lacks")
            _check_value(column, row[column])
        try:
            return render(self._template, self.guard, row)  # a mapping, not keywords: a column may be named 'self'
        except RenderLimit as e:
            raise RowError("template_error", str(e)) from None
        except Exception as e:  # the template failed on this row's values (1/0, 'a' + 1, a recursion...)
            raise RowError("template_error", f"{type(e).__name__}: {str(e)[:500]}") from None

    def chat_text(self, system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self._apply_chat(messages)

    def _apply_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        try:
            if self._chat is not None:  # the job's own: bounded as its user template is
                return render(self._chat, self.guard, {**self.tokenizer.special_tokens_map, "messages": messages,
                                                       "add_generation_prompt": True, "tools": tools,
                                                       "documents": None})
            text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                      add_generation_prompt=True)
        except RenderLimit as e:
            raise RowError("template_error", f"the chat template: {e}") from None
        except Exception as e:  # the model's template may reject a chat (roles out of order...)
            raise RowError("template_error", f"the chat template rejected the messages: {str(e)[:500]}") from None
        if len(text) > self.guard.bounds.max_chars:  # the model's template is timed; its size counted here
            raise RowError("template_error", f"the chat template's text is longer than prompt.max_render_chars "
                                             f"({self.guard.bounds.max_chars:,})")
        return text

    def encode(self, text: str) -> list[int]:
        # The chat template already holds the special tokens (BOS...): add none twice.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, row: dict[str, Any]) -> RenderedPrompt:
        result = self.render_many([row])[0]
        if isinstance(result, RowError):
            raise result
        return result

    def render_many(self, rows: list[dict[str, Any]], max_tokens: list[int] | None = None
                    ) -> list[RenderedPrompt | RowError]:
        """Render a batch; the tokenizer encodes all texts in one (parallel) call.

        ``max_tokens`` gives each row's own (per-row sampling); default the job's.
        """
        out: list[RenderedPrompt | RowError | None] = [None] * len(rows)
        parts: list[tuple[int, str | None, str | None, str, bool]] = []
        with self.guard.batch():  # each row's render bounded in time and memory; a stop ends it
            for i, row in enumerate(rows):
                try:
                    with self.guard:  # this row's deadline
                        part = self._text(row)
                    _check_text(part[2])
                    parts.append((i, *part))
                except RowError as e:
                    out[i] = e
                except RenderLimit as e:  # the timer's, between two steps of the row's checks
                    out[i] = RowError("template_error", str(e))
        encoded: dict[int, list[int]] = {}
        for is_chat in (True, False):
            group = [p for p in parts if p[4] is is_chat]
            if group:  # chat texts hold their special tokens (BOS...) already; raw prompts get them here
                ids = self.tokenizer([p[3] for p in group], add_special_tokens=not is_chat)["input_ids"]
                encoded.update(zip([p[0] for p in group], ids))
        for i, system, user, _, _ in parts:
            ids, want = encoded[i], max_tokens[i] if max_tokens else self.max_tokens
            key = self.prefix_key(rows[i])
            if self.max_model_len - len(ids) >= want:
                out[i] = RenderedPrompt(ids, key, want, None)
                continue
            try:
                out[i] = self._fit(system, user, ids, key, want)
            except RowError as e:
                e.prompt_tokens = len(ids)
                out[i] = e
        return out  # type: ignore[return-value]

    def _fit(self, system: str | None, user: str | None, ids: list[int], key: str, want: int) -> RenderedPrompt:
        """Apply prompt.on_too_long to a prompt that leaves too little room for max_tokens."""
        n, limit = len(ids), self.max_model_len
        if self.spec.on_too_long == "shrink" and n < limit:
            return RenderedPrompt(ids, key, limit - n, f"max_tokens lowered from {want} to {limit - n}")
        if self.spec.on_too_long == "truncate" and user is not None:  # only a template's user text is cut
            user_ids = self.encode(user)
            cut = n + want - limit + _TRUNCATION_MARGIN
            if cut < len(user_ids):
                kept = self.tokenizer.decode(user_ids[: len(user_ids) - cut])
                with self.guard:  # the chat template runs again, on the cut text: bounded as the first time
                    text = self.chat_text(system, kept)
                new_ids = self.encode(text)
                if len(new_ids) + want <= limit:
                    return RenderedPrompt(new_ids, key, want, f"prompt truncated from {n} to {len(new_ids)} tokens")
        raise RowError("prompt_too_long",
                       f"{n} prompt tokens + max_tokens {want} exceed max_model_len {limit}")
