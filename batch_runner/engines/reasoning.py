"""Reasoning models: vLLM's reasoning parsers (``model.reasoning_parser``) split a finished text
into its reasoning and its answer, as vLLM's OpenAI server does for ``reasoning_content``.

Only the whole-text split is used (no streaming). The parser API differs across vLLM versions:
``extract_reasoning`` (0.32, and vLLM's main of early 2026) was ``extract_reasoning_content`` before;
the registry lists its names with ``list_registered`` (lazy registration) or, older, only in
``reasoning_parsers``. What a parser needs of the tokenizer varies too: on 0.32 ``deepseek_r1``
refuses one without ``<think>``/``</think>`` tokens and ``qwen3`` does not; earlier ``qwen3`` did.
(On 0.26.0 and 0.32.0, the two versions batch-run is tested with, both parsers split alike.)
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from typing import Any

from ..errors import JobError

KEY = "model.reasoning_parser"


@dataclass(frozen=True)
class Split:
    reasoning: str  # "" where the parser found none
    answer: str


def parser_names() -> list[str]:
    """The reasoning parsers the installed vLLM registers."""
    from vllm.reasoning import ReasoningParserManager as manager

    listed = getattr(manager, "list_registered", None)
    return list(listed()) if listed else sorted(manager.reasoning_parsers)


@dataclass
class ReasoningSplitter:
    """One vLLM reasoning parser, built for the model's tokenizer."""

    name: str
    parser: Any

    def split(self, text: str) -> Split:
        extract = getattr(self.parser, "extract_reasoning", None) or self.parser.extract_reasoning_content
        reasoning, answer = extract(text, _request())
        return Split(reasoning or "", answer or "")


def load_reasoning_parser(name: str | None, tokenizer: Any) -> ReasoningSplitter | None:
    """The parser ``name`` for this tokenizer (None where no parser is set); an unknown name, or a
    parser that refuses the tokenizer (its think tokens missing), is a JobError naming the key."""
    if name is None:
        return None
    from vllm.reasoning import ReasoningParserManager as manager

    names = parser_names()
    if name not in names:
        listed = textwrap.fill(", ".join(names), 96, initial_indent="  ", subsequent_indent="  ")
        raise JobError(f"{KEY}: {name!r} is not one of vLLM's reasoning parsers:\n{listed}")
    try:
        return ReasoningSplitter(name, manager.get_reasoning_parser(name)(tokenizer))
    except Exception as e:  # vLLM raises RuntimeError or ValueError, and a plugin anything
        raise JobError(f"{KEY}: the {name} parser cannot work with this model's tokenizer: {e}") from e


@functools.cache
def _request() -> Any:
    """A stand-in for the chat request some parsers read (chat_template_kwargs); none is sent."""
    try:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    except ImportError:  # vLLM before the entrypoints were split by endpoint
        from vllm.entrypoints.openai.protocol import ChatCompletionRequest
    return ChatCompletionRequest(messages=[], model="batch-run")
