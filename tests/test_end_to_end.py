"""End to end through the CLI with the real vLLM engine (CPU build) and the embedded model.

These tests run in-process and share one engine (started by the first test that needs it).
"""

import json

import pandas as pd
import pyarrow.dataset as ds
import pytest

from conftest import ROOT, news_rows, write_job, write_jsonl

pytestmark = pytest.mark.engine

FAST = {"max_tokens": 16}


def read_results(out):
    return pd.read_parquet(out / "results")


def read_stats(out):
    return pd.read_parquet(out / "stats")


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
    """One JSONL run shared by the checks below."""
    from click.testing import CliRunner

    from batch_runner.cli import main

    tmp = tmp_path_factory.mktemp("jsonl")
    job = write_job(tmp, sampling=FAST, output={"batch_size": 8})
    result = CliRunner().invoke(main, ["run", str(job), "--limit", "32"], catch_exceptions=False)
    return tmp, job, result


def test_jsonl_run_writes_one_result_per_row(jsonl_run):
    tmp, _, result = jsonl_run
    assert result.exit_code == 0, result.output
    df = read_results(tmp / "out")
    expected = [r["id"] for r in news_rows(32)]
    assert sorted(df["id"]) == sorted(expected)
    assert df["id"].is_unique
    assert df["error"].isna().all()
    assert (df["output"].str.strip().str.len() > 0).all()
    assert set(df["finish_reason"]) <= {"stop", "length"}
    assert (df["output_tokens"] <= FAST["max_tokens"]).all()
    assert list(df.columns[:3]) == ["id", "title", "topic"]


def test_shared_system_prompt_hits_the_prefix_cache(jsonl_run):
    df = read_results(jsonl_run[0] / "out")
    assert (df["cached_prompt_tokens"] > 0).mean() >= 0.75
    assert (df["cached_prompt_tokens"] <= df["prompt_tokens"]).all()


def test_stats_add_up_to_results(jsonl_run):
    out = jsonl_run[0] / "out"
    df, stats = read_results(out), read_stats(out)
    assert len(stats) == 4  # 32 rows in batches of 8
    for col in ("prompt_tokens", "cached_prompt_tokens", "output_tokens"):
        assert stats[col].sum() == df[col].sum()
    assert stats["requests"].sum() == len(df)
    assert (stats["wall_s"] > 0).all() and (stats["output_tok_s"] > 0).all()
    assert stats["gpu_memory_used_gb"].isna().all()  # no GPU here


def test_summary_and_metadata(jsonl_run):
    out = jsonl_run[0] / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["complete"] is True
    assert summary["output"]["rows"] == 32
    assert summary["engine"]["max_num_seqs"] == 512
    assert "scheduler_delay_factor" in summary["engine"]["ignored"]
    meta = ds.dataset(out / "results").schema.metadata
    info = json.loads(meta[b"batch_runner"])
    assert info["job"] == "summarize" and info["vllm"] == summary["vllm"]
    assert (out / "shards" / "0000-of-0001.done").exists()


def test_results_read_with_datasets(jsonl_run):
    import datasets

    out = jsonl_run[0] / "out"
    d = datasets.load_dataset("parquet", data_files=str(out / "results" / "*.parquet"), split="train")
    assert d.num_rows == 32


def test_rerun_resumes_and_changes_nothing(cli, jsonl_run):
    tmp, job, _ = jsonl_run
    parts = sorted((tmp / "out" / "results").iterdir())
    result = cli("run", job, "--limit", "32")
    assert result.exit_code == 0, result.output
    assert "32 were done before" in result.output
    assert sorted((tmp / "out" / "results").iterdir()) == parts


def test_changed_sampling_refuses_to_resume(cli, jsonl_run):
    tmp, job, _ = jsonl_run
    result = cli("run", job, "--limit", "32", "--set", "sampling.temperature=0.5")
    assert result.exit_code == 2
    assert "sampling.temperature: 0.0 -> 0.5" in result.output
    assert "--fresh" in result.output


def test_a_larger_limit_resumes_and_adds_the_new_rows(cli, jsonl_run):
    tmp, job, _ = jsonl_run
    result = cli("run", job, "--limit", "36")
    assert result.exit_code == 0, result.output
    assert "32 were done before" in result.output
    df = read_results(tmp / "out")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(36))


def test_parquet_input(cli, tmp_path):
    job = write_job(tmp_path, sampling=FAST, input={"path": str(ROOT / "inputs" / "news.parquet")})
    result = cli("run", job, "--limit", "6")
    assert result.exit_code == 0, result.output
    df = read_results(tmp_path / "out")
    assert sorted(df["id"]) == [r["id"] for r in news_rows(6)]
    assert (df["output"].str.len() > 0).all()


def test_bad_rows_become_error_rows(cli, tmp_path):
    rows = news_rows(8)
    del rows[1]["title"]  # missing column
    rows[2]["text"] = None  # null value
    rows[3]["text"] = rows[3]["text"] * 60  # far past max_model_len
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = write_job(tmp_path, sampling=FAST, input={"path": str(path)}, output={"batch_size": 4})
    result = cli("run", job)
    assert result.exit_code == 3, result.output
    df = read_results(tmp_path / "out").set_index("id")
    assert len(df) == 8
    codes = df["error_code"].to_dict()
    assert codes[rows[1]["id"]] == "missing_column"
    assert codes[rows[2]["id"]] == "null_value"
    assert codes[rows[3]["id"]] == "prompt_too_long"
    assert df.loc[rows[3]["id"], "prompt_tokens"] > 2048
    served = df[df["error_code"].isna()]
    assert len(served) == 5 and (served["output"].str.len() > 0).all()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["output"]["errors_by_code"] == {"missing_column": 1, "null_value": 1, "prompt_too_long": 1}

    # --retry-errors runs exactly those rows again; each id is still there once.
    retry = cli("run", job, "--retry-errors")
    assert retry.exit_code == 3
    again = read_results(tmp_path / "out")
    assert again["id"].is_unique and len(again) == 8


def test_too_long_prompt_truncated_or_shrunk_when_asked(cli, tmp_path):
    rows = news_rows(2)
    rows[0]["text"] = rows[0]["text"] * 60
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = write_job(tmp_path, sampling=FAST, input={"path": str(path)}, prompt={"on_too_long": "truncate"})
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    df = read_results(tmp_path / "out").set_index("id")
    assert df.loc[rows[0]["id"], "adjustment"].startswith("prompt truncated from")
    assert df.loc[rows[0]["id"], "prompt_tokens"] + FAST["max_tokens"] <= 2048
    assert pd.isna(df.loc[rows[1]["id"], "adjustment"])
