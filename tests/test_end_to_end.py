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
    from batch_runner.runner import shard

    tmp = tmp_path_factory.mktemp("jsonl")
    job = write_job(tmp, sampling=FAST, output={"batch_size": 8})
    interval, shard.TIMELINE_INTERVAL_S = shard.TIMELINE_INTERVAL_S, 0.2  # a fine timeline for the checks
    try:
        result = CliRunner().invoke(main, ["run", str(job), "--limit", "32"], catch_exceptions=False)
    finally:
        shard.TIMELINE_INTERVAL_S = interval
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
    assert (stats["span_s"] > 0).all() and (stats["span_output_tok_s"] > 0).all()
    assert (stats["submitted_at"] <= stats["started_at"]).all() and (stats["started_at"] < stats["finished_at"]).all()
    assert stats["gpu_memory_used_gb"].isna().all()  # no GPU here


def test_batch_rates_agree_with_the_engine_timeline(jsonl_run):
    """The 32 rows run as one wave (32 rows, max_num_seqs 64), so the four batches overlap and finish
    together. A batch can never outpace the engine, and with N batches sharing its span it gets
    about 1/N of the engine's tokens: each batch's span rate lies between timeline/(2N) and
    1.5 x timeline over the same span (1.5 and 2 allow for the timeline's 0.2 s granularity)."""
    out = jsonl_run[0] / "out"
    stats, timeline = read_stats(out), pd.read_parquet(out / "timeline")
    assert (timeline["source"] == "vllm").all()  # the engine's own counters, on the CPU build too
    summary = json.loads((out / "summary.json").read_text())
    assert abs(timeline["interval_s"].sum() - summary["this_run"]["generation_s"]) < 0.01  # intervals tile it
    for _, b in stats.iterrows():
        overlap = (timeline["finished_at"].clip(upper=b["finished_at"])
                   - timeline["started_at"].clip(lower=b["started_at"])).dt.total_seconds().clip(lower=0)
        engine_rate = (timeline["output_tokens"] * overlap / timeline["interval_s"]).sum() / b["span_s"]
        sharing = ((stats["started_at"] < b["finished_at"]) & (stats["finished_at"] > b["started_at"])).sum()
        assert engine_rate / (2 * sharing) <= b["span_output_tok_s"] <= 1.5 * engine_rate, (b.to_dict(), engine_rate)


def test_summary_and_metadata(jsonl_run):
    out = jsonl_run[0] / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["complete"] is False  # 32 of 240 rows: the run is done, the shard is not
    assert summary["output"]["rows"] == 32
    assert summary["engine"]["max_num_seqs"] == 64  # the throughput profile's 512, capped on the CPU
    assert summary["sizing"] is None  # max_num_seqs auto is not applied on the CPU: the cap stays
    assert summary["engine"]["ignored"] == []  # the profiles carry only options vLLM has
    meta = ds.dataset(out / "results").schema.metadata
    info = json.loads(meta[b"batch_runner"])
    assert info["job"] == "summarize" and info["vllm"] == summary["vllm"]
    assert not (out / "shards" / "0000-of-0001.done").exists()


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
    assert "problems found" not in result.output  # one problem, told in several lines


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
