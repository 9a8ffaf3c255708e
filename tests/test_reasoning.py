"""Reasoning models (model.reasoning_parser): vLLM's parsers split known texts into reasoning and
answer, a wrong name or a tokenizer a parser refuses is a job error, and a fake-engine run writes the
reasoning column and the OpenAI output's reasoning_content. (The embedded model does not reason.)"""

import json

import pandas as pd
import pyarrow as pa
import pytest
from conftest import ROOT, SUMMARIZE, write_job

from batch_runner.config import load_job
from batch_runner.engines.models import resolve_model
from batch_runner.engines.reasoning import load_reasoning_parser, parser_names
from batch_runner.errors import JobError
from batch_runner.inputs.assignment import ALL
from batch_runner.inputs.digest import InputContent
from batch_runner.output.resume import changed_keys, fingerprint, fingerprint_hash
from batch_runner.output.schemas import results_schema
from batch_runner.records import Completion, Request, Sample
from batch_runner.runner.rows import completed_result

SUMMARIZE_FINGERPRINT = "99bd0986a8b0687c"  # tests/test_engines.py: before reasoning_parser existed


def _tokenizer(think: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    if think:  # a reasoning model's tokenizer has <think> and </think> as tokens of their own
        tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    return tokenizer


@pytest.fixture(scope="module")
def think_tokenizer():
    return _tokenizer(think=True)


# (text, reasoning, answer) as vLLM 0.32's deepseek_r1 and qwen3 parsers split them
KNOWN = [
    ("<think>Two and two.</think>4", "Two and two.", "4"),
    ("Two and two.</think>4", "Two and two.", "4"),  # <think> was in the prompt (the chat template's)
    ("<think></think>4", "", "4"),  # empty reasoning
    ("<think>Still thinking when max_tokens ran out", "Still thinking when max_tokens ran out", ""),
    ("<think>Two and two.</think>", "Two and two.", ""),  # stopped right after the reasoning
    ("<think>a</think>\n\nThe answer: 4", "a", "\n\nThe answer: 4"),
]


@pytest.mark.parametrize("name", ["deepseek_r1", "qwen3"])
@pytest.mark.parametrize(("text", "reasoning", "answer"), KNOWN)
def test_the_parser_splits_known_texts(think_tokenizer, name, text, reasoning, answer):
    split = load_reasoning_parser(name, think_tokenizer).split(text)
    assert (split.reasoning, split.answer) == (reasoning, answer)


def test_no_parser_no_split():
    assert load_reasoning_parser(None, object()) is None


def test_an_unknown_parser_is_a_job_error_listing_the_names():
    with pytest.raises(JobError) as e:
        load_reasoning_parser("deepseek", _tokenizer(think=False))
    message = str(e.value)
    assert message.startswith("model.reasoning_parser: 'deepseek' is not one of vLLM's reasoning parsers:")
    assert "deepseek_r1" in message and "qwen3" in message and "(more characters)" not in message
    assert set(parser_names()) >= {"deepseek_r1", "qwen3"}


def test_a_parser_that_refuses_the_tokenizer_is_a_job_error():
    """deepseek_r1 needs <think> and </think> as tokens; the embedded model's tokenizer has neither."""
    with pytest.raises(JobError, match="model.reasoning_parser: the deepseek_r1 parser cannot work with this "
                                       "model's tokenizer: .*could not locate think start/end tokens"):
        load_reasoning_parser("deepseek_r1", _tokenizer(think=False))


def _request(**sampling) -> Request:
    return Request(key="r:0:0", batch=0, position=0, token_ids=[1, 2], sampling=sampling)


def test_each_sample_carries_its_own_reasoning(think_tokenizer):
    splitter = load_reasoning_parser("qwen3", think_tokenizer)
    c = Completion("r:0:0", [Sample("<think>a</think>A", "stop", 3), Sample("<think>b</think>B", "length", 4)], 2, 0)
    row = completed_result("x", {}, _request(), c, splitter)
    assert (row.output, row.reasoning, row.output_tokens) == ("A", "a", 7)  # max_tokens covers both parts
    assert row.samples == [{"text": "A", "reasoning": "a", "finish_reason": "stop", "output_tokens": 3},
                           {"text": "B", "reasoning": "b", "finish_reason": "length", "output_tokens": 4}]
    schema = results_schema(pa.schema([]), reasoning=True)
    assert pa.Table.from_pylist([row.as_row()], schema=schema).to_pylist()[0]["samples"] == row.samples


def test_the_json_check_reads_the_answer(think_tokenizer):
    splitter = load_reasoning_parser("deepseek_r1", think_tokenizer)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    done = Completion("r:0:0", [Sample('<think>{"a": "no"}</think>{"a": 1}', "stop", 9)], 2, 0)
    row = completed_result("x", {}, _request(json_schema=schema), done, splitter)
    assert (row.error_code, json.loads(row.json), row.reasoning) == (None, {"a": 1}, '{"a": "no"}')
    cut = Completion("r:0:0", [Sample('<think>{"a": 1}', "length", 9)], 2, 0)  # no answer: reasoning only
    assert completed_result("x", {}, _request(json_schema=schema), cut, splitter).error_code is not None


def test_without_a_parser_the_row_is_as_before():
    row = completed_result("x", {}, _request(), Completion("r:0:0", [Sample("<think>a</think>A", "stop", 3)], 2, 0))
    assert (row.output, row.reasoning) == ("<think>a</think>A", None)
    assert "reasoning" not in results_schema(pa.schema([])).names  # existing outputs keep their schema


def test_the_parser_is_in_the_fingerprint_only_when_set():
    def of(sets):
        return fingerprint(load_job(SUMMARIZE, sets), ALL, None, InputContent([]))

    assert fingerprint_hash(of([])) == fingerprint_hash(of(["model.reasoning_parser=null"])) == SUMMARIZE_FINGERPRINT
    assert fingerprint_hash(of(["model.reasoning_parser=qwen3"])) != SUMMARIZE_FINGERPRINT
    assert changed_keys(of([]), of(["model.reasoning_parser=qwen3"])) == \
        ["model.reasoning_parser: '(absent)' -> 'qwen3'"]


def test_a_kept_column_named_reasoning_clashes_only_with_a_parser(tmp_path):
    assert load_job(write_job(tmp_path, input={"keep_columns": ["reasoning"]}))
    with pytest.raises(JobError, match="'reasoning' is the name of a result column"):
        load_job(write_job(tmp_path, input={"keep_columns": ["reasoning"]}, model={"reasoning_parser": "qwen3"}))


def _fake_reasoning_job(tmp_path, **model):
    return write_job(tmp_path, model={"reasoning_parser": "qwen3", **model},
                     engine={"backend": "fake", "extra": {"think": True}},
                     output={"openai": True, "batch_size": 4})


def test_a_fake_run_writes_the_reasoning_and_the_openai_reasoning_content(cli, tmp_path):
    result = cli("run", _fake_reasoning_job(tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    df = pd.read_parquet(out / "results")
    rows = len((ROOT / "inputs" / "news.jsonl").read_text().splitlines())
    assert len(df) == rows and list(df.columns[df.columns.get_loc("output"):][:2]) == ["output", "reasoning"]
    assert df["output"].str.fullmatch(r"answer to \d+ tokens").all()
    assert df["reasoning"].str.fullmatch(r"thinking about \d+ tokens").all()
    lines = [json.loads(line) for line in (out / "openai" / "results.jsonl").read_text().splitlines()]
    assert len(lines) == rows
    for line in lines:
        choice = line["response"]["body"]["choices"][0]
        row = df.set_index("id").loc[line["custom_id"]]
        key = "message" if "message" in choice else None
        got = choice[key] if key else choice
        assert (got.get("content", got.get("text")), got["reasoning_content"]) == (row["output"], row["reasoning"])
    assert cli("run", _fake_reasoning_job(tmp_path)).exit_code == 0  # resumes: nothing left, no foreign part


def test_a_fake_run_with_an_unknown_parser_exits_2_before_any_output(cli, tmp_path):
    result = cli("run", _fake_reasoning_job(tmp_path, reasoning_parser="nope"))
    assert result.exit_code == 2
    assert "model.reasoning_parser: 'nope' is not one of vLLM's reasoning parsers" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
