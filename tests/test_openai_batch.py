"""OpenAI batch files as the ``openai`` package writes them (issue 26, part 3): every body field applied
or a per-row error naming it, and every output line read back by the package's own types.

The mapping is tested as pure functions; the run through the CLI uses the fake engine (the runner's
logic, with the embedded model's tokenizer and chat template); test_request_features runs vLLM.
"""

import json
from types import SimpleNamespace

import pytest
import yaml
from conftest import write_jsonl
from openai.types import BatchError, Completion
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam

from batch_runner.engines.vllm_engine import token_logprobs
from batch_runner.errors import RowError
from batch_runner.inputs.openai_batch import (
    REQUEST_ERROR,
    TOOLS,
    chat_messages,
    chat_tools,
    check_request,
    request_row,
    sampling_from_body,
)
from batch_runner.output.openai import error_line, response_line
from batch_runner.records import Sample, TokenLogprob
from batch_runner.runner.rows import logprobs_content, logprobs_json

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER: ChatCompletionMessageParam = {"role": "user", "content": "Hi"}


def _error(fn, *args) -> RowError:
    with pytest.raises(RowError) as e:
        fn(*args)
    return e.value


# -- sampling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "logprobs"), [
    ({"logprobs": True, "top_logprobs": 2}, 2),
    ({"logprobs": True}, 0),  # only the sampled token's own logprob, as vLLM's server maps it
    ({"logprobs": False}, None),
    ({"logprobs": False, "top_logprobs": 0}, None),
])
def test_chat_logprobs_become_vllms_count_never_a_bool(body, logprobs):
    values = sampling_from_body({"messages": [USER], **body})
    assert values.get("logprobs") == logprobs
    assert not isinstance(values.get("logprobs"), bool)  # a bool kills vLLM's engine core input thread


@pytest.mark.parametrize(("body", "code", "message"), [
    ({"top_logprobs": 2}, "invalid_sampling", "body.top_logprobs: needs logprobs: true"),
    ({"logprobs": "yes"}, "invalid_sampling", "body.logprobs: must be true or false, got 'yes'"),
    ({"logprobs": True, "top_logprobs": 21}, "invalid_sampling", "body.top_logprobs: must be at most 20"),
    ({"seed": "7"}, "invalid_sampling", "body.seed: must be an integer"),
    ({"n": 0}, "invalid_sampling", "body.n: must be an integer of at least 1, got 0"),
    ({"max_completion_tokens": True}, "invalid_sampling", "body.max_completion_tokens: must be an integer"),
    ({"temperature": "hot"}, "invalid_sampling", "body.temperature: must be a number, got 'hot'"),
    ({"stop": [1]}, "invalid_sampling", "body.stop: must be a string or a list of strings"),
    ({"ignore_eos": "yes"}, "invalid_sampling", "body.ignore_eos: must be true or false, got 'yes'"),
    ({"top_k": 2.5}, "invalid_sampling", "body.top_k: must be an integer of at least -1"),
    ({"stop_token_ids": ["a"]}, "invalid_sampling", "body.stop_token_ids: must be a list of token ids"),
    ({"logit_bias": {"x": 1}}, "invalid_sampling", "body.logit_bias: must map token ids to numbers"),
    ({"response_format": {"type": "json_schema"}}, "invalid_request", "body.response_format: must be"),
    ({"functions": [{"name": "f"}]}, "unsupported_request", "body.functions: batch-run does not apply it"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "unsupported_request", "body.audio:"),
    ({"modalities": ["text", "audio"]}, "unsupported_request", "body.modalities: batch-run generates text only"),
    ({"echo": True}, "unsupported_request", "body.echo: batch-run does not apply it to chat requests"),
])
def test_a_chat_field_that_cannot_apply_is_a_row_error_naming_it(body, code, message):
    e = _error(sampling_from_body, {"messages": [USER], **body})
    assert e.code == code and e.message.startswith(message), e.message
    assert "SamplingParams" not in e.message and "__init__" not in e.message


def test_chat_fields_map_to_vllm_names():
    values = sampling_from_body({
        "model": "m", "messages": [USER], "max_tokens": 9, "max_completion_tokens": 5, "temperature": 0.5,
        "top_p": 0.9, "seed": 3, "stop": "\n", "n": 2, "presence_penalty": 0.1, "frequency_penalty": 0.2,
        "logit_bias": {"42": -100}, "user": "u", "metadata": {"k": "v"}, "store": False, "stream": False,
        "service_tier": "auto", "parallel_tool_calls": True, "top_k": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}})
    assert values == {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["\n"], "n": 2,
                      "presence_penalty": 0.1, "frequency_penalty": 0.2, "logit_bias": {42: -100.0},
                      "json_schema": {"type": "object"}, "top_k": 4}
    assert sampling_from_body({"messages": [USER], "response_format": {"type": "json_object"}})["json_schema"] == \
        {"type": "object"}
    assert "json_schema" not in sampling_from_body({"messages": [USER], "response_format": {"type": "text"}})


def test_completion_fields_map_to_vllm_names():
    values = sampling_from_body({"prompt": "1, 2,", "logprobs": 3, "max_tokens": 4, "echo": False, "best_of": 1},
                                chat=False)
    assert values == {"logprobs": 3, "max_tokens": 4}
    assert _error(sampling_from_body, {"prompt": "x", "echo": True}, False).message.startswith("body.echo:")
    assert _error(sampling_from_body, {"prompt": "x", "suffix": "y"}, False).message.startswith("body.suffix:")
    assert _error(sampling_from_body, {"prompt": "x", "best_of": 3}, False).message.startswith("body.best_of:")
    assert _error(sampling_from_body, {"prompt": "x", "logprobs": True}, False).message.startswith("body.logprobs:")
    assert _error(sampling_from_body, {"prompt": "x", "tools": []}, False).message.startswith("body.tools:")


# -- messages and tools -----------------------------------------------------------------------------
WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_CHAT: list[ChatCompletionMessageParam] = [
    {"role": "developer", "content": "Use the tools."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in"}, {"type": "text", "text": "Paris?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
]


def test_messages_become_the_chat_templates_format():
    assert chat_messages(TOOL_CHAT) == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in\nParis?"},  # text parts joined, as vLLM's server joins them
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]


@pytest.mark.parametrize(("messages", "code", "message"), [
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
     "unsupported_request", "body.messages[0].content[0]: a 'image_url' part: batch-run sends text only"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}],
     "unsupported_request", "body.messages[0].content[0]: a 'input_audio' part"),
    ([{"role": "function", "name": "f", "content": "x"}], "unsupported_request", "body.messages[0].role: 'function'"),
    ([{"role": "robot", "content": "x"}], "invalid_request", "body.messages[0].role: 'robot'"),
    ([{"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "type": "function",
                                                            "function": {"name": "f", "arguments": "{oops"}}]}],
     "invalid_request", "body.messages[0].tool_calls[0].function.arguments: must be a JSON text"),
    ([{"role": "assistant", "content": "x", "audio": {"id": "a"}}], "unsupported_request", "body.messages[0].audio:"),
    ([], "invalid_request", "body.messages: must be a non-empty list"),
])
def test_a_message_that_cannot_be_rendered_is_a_row_error_naming_it(messages, code, message):
    e = _error(chat_messages, messages)
    assert e.code == code and e.message.startswith(message), e.message


def test_tools_go_to_the_template_and_a_forced_call_is_refused():
    assert chat_tools({"tools": [WEATHER], "tool_choice": "auto"}) == [WEATHER]
    assert chat_tools({"tools": [WEATHER], "tool_choice": "none"}) == [WEATHER]
    assert chat_tools({}) is None
    forced = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", forced):
        e = _error(chat_tools, {"tools": [WEATHER], "tool_choice": choice})
        assert e.code == "unsupported_request" and e.message.startswith("body.tool_choice:")
    e = _error(chat_tools, {"tools": [{"type": "custom", "custom": {"name": "x"}}]})
    assert e.message.startswith("body.tools[0]: batch-run passes function tools only")


def test_lines_become_rows_or_error_rows():
    row = request_row({"custom_id": "a", "method": "POST", "url": CHAT,
                       "body": {"model": "m", "messages": TOOL_CHAT, "tools": [WEATHER], "logprobs": True}}, "f, line 1")
    assert row["messages"][1]["content"] == "Weather in\nParis?" and row[TOOLS] == [WEATHER]
    assert row["sampling"] == {"logprobs": 0} and REQUEST_ERROR not in row
    check_request(row)  # runs
    for url, body, message in [
        ("/v1/embeddings", {"model": "m", "input": "x"}, "url /v1/embeddings: batch-run runs /v1/chat/completions"),
        (CHAT, {"messages": [USER], "tool_choice": "required"}, "body.tool_choice:"),
        (COMPLETIONS, {"prompt": ["a", "b"]}, "body.prompt: batch-run runs one text prompt per line"),
    ]:
        bad = request_row({"custom_id": "e", "method": "POST", "url": url, "body": body}, "f, line 2")
        assert bad["custom_id"] == "e" and bad["url"] == url
        assert _error(check_request, bad).message.startswith(message)
    assert request_row({"custom_id": "c", "url": COMPLETIONS, "body": {"prompt": ["one"]}}, "w")["prompt"] == "one"


# -- logprobs, engine to output ---------------------------------------------------------------------
def _lp(logprob, rank, token):
    return SimpleNamespace(logprob=logprob, rank=rank, decoded_token=token)


def test_vllms_logprobs_become_plain_values_best_first():
    # vLLM's mapping per token: the sampled token (here ranked 3rd) and the top candidates
    output = SimpleNamespace(token_ids=[7, 8], logprobs=[
        {7: _lp(-2.0, 3, " b"), 5: _lp(-0.5, 1, " a"), 6: _lp(-1.0, 2, " c")},
        {8: _lp(float("-inf"), 1, "!")}])
    got = token_logprobs(output)
    assert got == (TokenLogprob(" b", -2.0, ((" a", -0.5, 1), (" c", -1.0, 2), (" b", -2.0, 3))),
                   TokenLogprob("!", -9999.0, (("!", -9999.0, 1),)))
    assert token_logprobs(SimpleNamespace(token_ids=[1], logprobs=None)) is None
    content = logprobs_content(Sample(" b!", "stop", 2, logprobs=got), 2)
    assert [c["token"] for c in content[0]["top_logprobs"]] == [" a", " c"]  # the sampled one ranks below
    assert logprobs_content(Sample("x", "stop", 1, logprobs=got), 0)[0]["top_logprobs"] == []
    assert logprobs_json([Sample("x", "stop", 1, logprobs=got)], None) is None  # not asked: no value


def _row(url, logprobs=None, **extra):
    return {"id": "row-1", "url": url, "output": "Hi!", "finish_reason": "stop", "prompt_tokens": 12,
            "cached_prompt_tokens": 8, "output_tokens": 2, "error_code": None, "error": None, "samples": None,
            "logprobs": logprobs, **extra}


LOGPROBS = logprobs_json([Sample("Hi!", "stop", 2, logprobs=(
    TokenLogprob("Hi", -0.1, (("Hi", -0.1, 1), ("Hello", -2.5, 2))),
    TokenLogprob("!", -0.3, (("!", -0.3, 1), (".", -1.5, 2)))))], 2)


def test_chat_output_lines_validate_as_the_openai_packages_types():
    line = response_line(_row(CHAT, LOGPROBS), "m", 1700000000, "fp_1")
    body = ChatCompletion.model_validate(line["response"]["body"])
    assert body.id.startswith("chatcmpl-") and body.object == "chat.completion" and body.created == 1700000000
    assert body.model == "m" and body.system_fingerprint == "fp_1"
    assert body.usage.prompt_tokens_details.cached_tokens == 8 and body.usage.total_tokens == 14
    choice = body.choices[0]
    assert choice.message.content == "Hi!" and choice.message.refusal is None and choice.message.role == "assistant"
    assert [t.token for t in choice.logprobs.content] == ["Hi", "!"]
    assert choice.logprobs.content[0].bytes == list(b"Hi")
    assert [(t.token, t.logprob) for t in choice.logprobs.content[0].top_logprobs] == [("Hi", -0.1), ("Hello", -2.5)]
    assert line["id"].startswith("batch_req_") and line["custom_id"] == "row-1" and line["error"] is None
    assert ChatCompletion.model_validate(response_line(_row(CHAT), "m", 1, "fp")["response"]["body"]) \
        .choices[0].logprobs is None


def test_completion_output_lines_validate_as_the_openai_packages_types():
    body = Completion.model_validate(response_line(_row(COMPLETIONS, LOGPROBS), "m", 1, "fp_1")["response"]["body"])
    assert body.id.startswith("cmpl-") and body.object == "text_completion" and body.system_fingerprint == "fp_1"
    assert body.usage.prompt_tokens_details.cached_tokens == 8
    logprobs = body.choices[0].logprobs
    assert logprobs.tokens == ["Hi", "!"] and logprobs.token_logprobs == [-0.1, -0.3]
    assert logprobs.top_logprobs == [{"Hi": -0.1, "Hello": -2.5}, {"!": -0.3, ".": -1.5}]
    assert logprobs.text_offset == [0, 2]


def test_error_lines_carry_the_code_and_message():
    line = error_line(_row(CHAT, error_code="invalid_sampling", error="invalid_sampling: body.seed: must be"))
    error = BatchError.model_validate(line["error"])
    assert line["response"] is None and error.code == "invalid_sampling" and error.message == "body.seed: must be"


# -- a run ------------------------------------------------------------------------------------------
def test_an_sdk_batch_file_runs_with_per_line_errors(cli, fake, tmp_path):
    """Lines the SDK can write: each runs or is an error line naming why; every line validates."""
    fake()
    chat = {"model": "m", "messages": TOOL_CHAT, "tools": [WEATHER], "tool_choice": "auto", "logprobs": True,
            "top_logprobs": 2, "max_completion_tokens": 5, "seed": 1, "stop": ["\n"], "n": 1}
    lines = [
        {"custom_id": "tools", "method": "POST", "url": CHAT, "body": chat},
        {"custom_id": "parts", "method": "POST", "url": CHAT,
         "body": {"model": "m", "messages": [TOOL_CHAT[1]], "response_format": {"type": "json_object"}}},
        {"custom_id": "image", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}},
        {"custom_id": "cmpl", "method": "POST", "url": COMPLETIONS, "body": {"model": "m", "prompt": "1, 2,",
                                                                             "logprobs": 1}},
        {"custom_id": "embed", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}},
        {"custom_id": "top", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": [USER],
                                                                     "top_logprobs": 3}},
    ]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "oai", "model": {"name": "smollm2-135m-instruct"},
                                   "input": {"path": str(write_jsonl(tmp_path / "b.jsonl", lines)), "format": "openai"},
                                   "engine": {"backend": "fake"}, "output": {"dir": str(tmp_path / "out"), "openai": True}}))
    preview = cli("run", job, "--dry-run")  # the first rows: a line that cannot run shows why, not "no prompt"
    assert "--- id image: unsupported_request: body.messages[0].content[0]: a 'image_url' part" in preview.output
    result = cli("run", job)
    assert result.exit_code == 3, result.output
    ok, errors = ([json.loads(x) for x in (tmp_path / "out" / "openai" / name).read_text().splitlines()]
                  for name in ("results.jsonl", "errors.jsonl"))
    assert sorted(x["custom_id"] for x in ok) == ["cmpl", "tools"]
    for line in ok:
        model = ChatCompletion if line["custom_id"] != "cmpl" else Completion
        model.model_validate(line["response"]["body"])
    by_id = {e["custom_id"]: BatchError.model_validate(e["error"]) for e in errors}
    assert by_id["image"].code == "unsupported_request" and by_id["image"].message.startswith(
        "body.messages[0].content[0]: a 'image_url' part")
    assert by_id["parts"].code == "invalid_json"  # response_format applied: the fake's text is no JSON
    assert by_id["embed"].message.startswith("url /v1/embeddings:")
    assert by_id["top"].code == "invalid_sampling" and by_id["top"].message == "body.top_logprobs: needs logprobs: true"
    # the results' logprobs column is part of the output's layout: recorded, and a rerun resumes with it
    assert json.loads((tmp_path / "out" / "job.json").read_text())["fingerprint"]["logprobs_column"] is True
    again = cli("run", job)
    assert again.exit_code == 3 and "6 were done before" in again.output, again.output
