"""Request features users bring from other tools, with the real engine: OpenAI batch files in and out,
per-row sampling, JSON-schema output, several samples per row, LoRA adapters."""

import json

import jsonschema
import pandas as pd
import pytest
import yaml
from conftest import ROOT, news_rows, write_jsonl

pytestmark = pytest.mark.engine


def job_file(tmp_path, **sections):
    """A minimal job of the embedded model, sections given whole."""
    job = {"name": "features", "model": {"name": "smollm2-135m-instruct", "max_model_len": 2048},
           "output": {"dir": str(tmp_path / "out"), "batch_size": 4}, **sections}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def chat_line(cid, text, **body):
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "smollm2", "messages": [{"role": "system", "content": "Answer briefly."},
                                                      {"role": "user", "content": text}], **body}}


def completion_line(cid, prompt, **body):
    return {"custom_id": cid, "method": "POST", "url": "/v1/completions",
            "body": {"model": "smollm2", "prompt": prompt, **body}}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openai_batch_file_round_trip(cli, tmp_path):
    lines = [
        chat_line("chat-1", "Name a colour.", max_tokens=6),
        chat_line("chat-2", "Name a fruit.", max_completion_tokens=4, temperature=0.8, top_p=0.9, seed=7),
        chat_line("chat-3", "Count to three.", max_tokens=12, stop=["3"]),
        chat_line("chat-4", "Say hello.", max_tokens=5, n=2, temperature=1.0, seed=1),
        chat_line("chat-bad", "Say hello.", max_tokens=5, temperature=-1),  # invalid per-row value
        completion_line("cmpl-1", "The capital of France is", max_tokens=5),
        completion_line("cmpl-2", "1, 2, 3,", max_tokens=7),
    ]
    data = write_jsonl(tmp_path / "batch.jsonl", lines)
    job = job_file(tmp_path, input={"path": str(data), "format": "openai"},
                   sampling={"max_tokens": 16}, output={"dir": str(tmp_path / "out"), "openai": True})
    result = cli("run", job)
    assert result.exit_code == 3, result.output  # done, with one error row

    out = tmp_path / "out"
    ok, errors = read_jsonl(out / "openai" / "results.jsonl"), read_jsonl(out / "openai" / "errors.jsonl")
    assert sorted(x["custom_id"] for x in ok + errors) == sorted(x["custom_id"] for x in lines)  # each id once
    assert [e["custom_id"] for e in errors] == ["chat-bad"]
    assert errors[0]["response"] is None and errors[0]["error"]["code"] == "invalid_sampling"
    by_id = {x["custom_id"]: x for x in ok}
    for cid, line in by_id.items():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        if cid.startswith("chat"):
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["message"]["role"] == "assistant"
            assert isinstance(body["choices"][0]["message"]["content"], str)
        else:
            assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)
    assert len(by_id["chat-4"]["response"]["body"]["choices"]) == 2  # n=2
    assert [c["index"] for c in by_id["chat-4"]["response"]["body"]["choices"]] == [0, 1]

    df = pd.read_parquet(out / "results").set_index("id")
    limits = {"chat-1": 6, "chat-2": 4, "chat-3": 12, "cmpl-1": 5, "cmpl-2": 7}
    for cid, limit in limits.items():  # the body's max_tokens, not the job's 16
        assert df.loc[cid, "output_tokens"] <= limit, (cid, df.loc[cid, "output_tokens"])
    assert df.loc["chat-1", "output_tokens"] == 6 or df.loc["chat-1", "finish_reason"] == "stop"
    samples = df.loc["chat-4", "samples"]
    assert len(samples) == 2 and all(s["output_tokens"] <= 5 for s in samples)
    assert df.loc["chat-4", "output_tokens"] == sum(s["output_tokens"] for s in samples)
    assert df.loc["chat-1", "samples"] is None  # n = 1: no list
    assert "temperature" in df.loc["chat-bad", "error"]


def test_an_openai_sdk_batch_file_runs_and_every_line_validates(cli, tmp_path):
    """Lines built from the openai package's request types: content parts, a tool-call conversation
    with tools, logprobs with top candidates; every output line reads back as the package's types."""
    from openai.types import BatchError, Completion
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming as ChatParams
    from openai.types.completion_create_params import CompletionCreateParamsNonStreaming as CompletionParams

    weather: ChatCompletionToolParam = {"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    tool_chat: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."}]
    parts: list[ChatCompletionMessageParam] = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                                               {"role": "user", "content": [{"type": "text", "text": "Name a"},
                                                                            {"type": "text", "text": "colour."}]}]
    bodies: dict[str, tuple[str, ChatParams | CompletionParams]] = {
        "parts": (CHAT, {"model": "smollm2", "messages": parts, "max_completion_tokens": 6, "logprobs": True,
                         "top_logprobs": 2, "temperature": 0}),
        "tools": (CHAT, {"model": "smollm2", "messages": tool_chat, "tools": [weather], "tool_choice": "auto",
                         "max_completion_tokens": 8, "seed": 3, "stop": ["\n\n"]}),
        "plain": (CHAT, {"model": "smollm2", "messages": parts, "max_tokens": 4, "logprobs": True}),
        "cmpl": (COMPLETIONS, {"model": "smollm2", "prompt": "1, 2, 3,", "max_tokens": 4, "logprobs": 2}),
        "embed": ("/v1/embeddings", {"model": "smollm2", "input": "x"}),  # type: ignore[dict-item]
    }
    lines = [{"custom_id": cid, "method": "POST", "url": url, "body": body} for cid, (url, body) in bodies.items()]
    data = write_jsonl(tmp_path / "batch.jsonl", lines)
    job = job_file(tmp_path, input={"path": str(data), "format": "openai"},
                   sampling={"max_tokens": 16}, output={"dir": str(tmp_path / "out"), "openai": True})
    result = cli("run", job)
    assert result.exit_code == 3, result.output  # the embeddings line is an error line

    out = tmp_path / "out" / "openai"
    ok, errors = read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl")
    assert [e["custom_id"] for e in errors] == ["embed"]
    assert BatchError.model_validate(errors[0]["error"]).message.startswith("url /v1/embeddings:")
    bodies_out = {line["custom_id"]: line["response"]["body"] for line in ok}
    assert sorted(bodies_out) == ["cmpl", "parts", "plain", "tools"]
    chats = {cid: ChatCompletion.model_validate(b) for cid, b in bodies_out.items() if cid != "cmpl"}
    for body in chats.values():
        assert body.id.startswith("chatcmpl-") and body.system_fingerprint and body.model == "smollm2-135m-instruct"
        assert body.usage.prompt_tokens_details.cached_tokens is not None
        assert body.choices[0].message.refusal is None
    assert chats["tools"].choices[0].logprobs is None  # not asked
    asked = chats["parts"].choices[0].logprobs.content
    assert len(asked) == chats["parts"].usage.completion_tokens > 0  # one entry per generated token
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes is not None for t in asked)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in asked)
    # (the end-of-text token, when generated, is among the tokens but not in the text)
    assert "".join(t.token for t in asked).startswith(chats["parts"].choices[0].message.content)
    plain = chats["plain"].choices[0].logprobs.content  # logprobs true alone: the sampled tokens' own only
    assert plain and all(t.top_logprobs == [] for t in plain)
    cmpl = Completion.model_validate(bodies_out["cmpl"])
    assert cmpl.id.startswith("cmpl-") and len(cmpl.choices[0].logprobs.tokens) == cmpl.usage.completion_tokens
    assert all(1 <= len(top) <= 2 for top in cmpl.choices[0].logprobs.top_logprobs)  # (two may read alike)


def test_per_row_sampling_from_columns(cli, tmp_path):
    rows = news_rows(8)
    for i, row in enumerate(rows):
        row["budget"] = 2 + i  # max_tokens 2..9
        row["temp"] = 0.0 if i % 2 else 0.9
    rows[5]["temp"] = "hot"  # not a number: that row fails, the others run
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    job = job_file(tmp_path, input={"path": str(data), "id_column": "id", "keep_columns": ["budget"]},
                   prompt={"template": "Summarize: {{ text }}"},
                   sampling={"max_tokens": 64, "seed": 3, "columns": {"max_tokens": "budget", "temperature": "temp"}})
    result = cli("run", job)
    assert result.exit_code == 3, result.output
    df = pd.read_parquet(tmp_path / "out" / "results").set_index("id")
    bad = rows[5]["id"]
    assert df.loc[bad, "error_code"] == "invalid_sampling"
    good = df.drop(index=bad)
    assert good["error_code"].isna().all()
    assert (good["output_tokens"] <= good["budget"]).all()
    assert (good.loc[good["finish_reason"] == "length", "output_tokens"] == good["budget"]).all()


SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string", "enum": ["politics", "sport", "weather", "culture", "other"]},
                   "urgent": {"type": "boolean"}},
    "required": ["topic", "urgent"],
    "additionalProperties": False,
}


def test_json_schema_outputs_parse_and_validate(cli, tmp_path):
    job = job_file(tmp_path, input={"path": str(ROOT / "inputs" / "news.jsonl"), "id_column": "id"},
                   prompt={"system": "Reply with JSON only.",
                           "template": "Classify this report as JSON with 'topic' and 'urgent'.\n\n{{ text }}"},
                   sampling={"max_tokens": 48, "json_schema": SCHEMA})
    result = cli("run", job, "--limit", 6)
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert len(df) == 6 and df["error_code"].isna().all()
    for text, stored in zip(df["output"], df["json"]):
        value = json.loads(text)
        jsonschema.validate(value, SCHEMA)
        assert json.loads(stored) == value


def test_output_failing_the_schema_is_an_error_row(cli, tmp_path):
    # Too few tokens to close the object: constrained decoding stops mid-way, and the check says so.
    job = job_file(tmp_path, input={"path": str(ROOT / "inputs" / "news.jsonl"), "id_column": "id"},
                   prompt={"template": "Classify as JSON: {{ text }}"},
                   sampling={"max_tokens": 3, "json_schema": SCHEMA})
    result = cli("run", job, "--limit", 2)
    assert result.exit_code == 3, result.output
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert set(df["error_code"]) == {"invalid_json"}
    assert df["output"].notna().all()  # the raw output is kept beside the error


def make_adapter(folder, seed):
    """A rank-4 PEFT LoRA adapter for the embedded model's q_proj and v_proj, random weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from batch_runner.engines.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct"))
    hidden, rank = config.hidden_size, 4
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for proj, out_dim in (("q_proj", hidden), ("v_proj", kv)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.1
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "base_model_name_or_path": "smollm2"}))
    return folder


@pytest.mark.own_engine  # LoRA and one sequence at a time: an engine of its own
def test_lora_adapters_per_job_and_per_row(cli, tmp_path):
    # One sequence at a time and no prefix cache: greedy text then does not depend on which rows
    # share a batch (it did: a flaky test), nor on vLLM's CPU LoRA kernels mixing adapters within
    # a batch (vllm-project/vllm#48421). So each row's output must equal, exactly, the output of a
    # run that gives every row that row's adapter.
    adapters = {"strong": str(make_adapter(tmp_path / "strong", 1)), "other": str(make_adapter(tmp_path / "other", 2))}
    rows = news_rows(6)
    names = ["other", None, "other", "missing", None, "other"]  # None: the job's default adapter
    for row, name in zip(rows, names):
        row["adapter"] = name
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    model = {"name": "smollm2-135m-instruct", "max_model_len": 2048, "lora_adapters": adapters, "lora": "strong"}
    common = {"input": {"path": str(data), "id_column": "id", "keep_columns": ["adapter"]},
              "prompt": {"template": "Summarize: {{ text }}"}, "sampling": {"max_tokens": 8},
              "engine": {"max_num_seqs": 1, "enable_prefix_caching": False}}
    alone = {}
    for name in adapters:
        out = tmp_path / f"{name}-only"
        assert cli("run", job_file(tmp_path, **common, model={**model, "lora": name}), "--output", out).exit_code == 0
        alone[name] = pd.read_parquet(out / "results").set_index("id")["output"]

    job = job_file(tmp_path, **common, model={**model, "lora_column": "adapter"})
    result = cli("run", job)
    assert result.exit_code == 3, result.output
    df = pd.read_parquet(tmp_path / "out" / "results").set_index("id")
    assert df.loc[rows[3]["id"], "error_code"] == "unknown_lora"
    assert "'missing' is not in model.lora_adapters" in df.loc[rows[3]["id"], "error"]
    assert df["error_code"].notna().sum() == 1
    for row, name in zip(rows, names):
        if name != "missing":
            assert df.loc[row["id"], "output"] == alone[name or "strong"][row["id"]], (row["id"], name)
    # the adapters differ, so the check means something (aligned by id: two runs may commit rows in other orders)
    assert (alone["strong"].sort_index() != alone["other"].sort_index()).sum() >= 2
