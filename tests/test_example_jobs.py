"""The job files under jobs/ that the docs show: each loads, and each that needs no adapter runs."""

import json

import pandas as pd
import pytest
from conftest import ROOT

from batch_runner.config import load_job

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_job_file_loads(path, monkeypatch):
    monkeypatch.setenv("LORA_FORMAL", "/adapters/formal")
    monkeypatch.setenv("LORA_BRIEF", "/adapters/brief")
    job = load_job(path)
    assert job.name == path.stem


def run_example(cli, tmp_path, monkeypatch, name, *args):
    """Run jobs/NAME.yaml from the repository root into tmp_path/out; it must exit 0."""
    monkeypatch.chdir(ROOT)
    result = cli("run", f"jobs/{name}.yaml", "--output", tmp_path / "out", *args)
    assert result.exit_code == 0, result.output
    return tmp_path / "out"


@pytest.mark.engine
def test_openai_batch_example(cli, tmp_path, monkeypatch):
    run_example(cli, tmp_path, monkeypatch, "openai-batch")
    sent = [json.loads(line)["custom_id"] for line in (ROOT / "inputs" / "openai-batch.jsonl").read_text().splitlines()]
    got = [json.loads(line)["custom_id"] for line in (tmp_path / "out" / "openai" / "results.jsonl").read_text().splitlines()]
    assert sorted(got) == sorted(sent)
    assert (tmp_path / "out" / "openai" / "errors.jsonl").read_text() == ""


@pytest.mark.engine
def test_per_row_sampling_example(cli, tmp_path, monkeypatch):
    df = pd.read_parquet(run_example(cli, tmp_path, monkeypatch, "per-row-sampling", "--limit", 4) / "results")
    questions = pd.read_json(ROOT / "inputs" / "questions.jsonl", lines=True).set_index("id")
    for _, row in df.iterrows():
        assert len(row["samples"]) == 3
        assert all(s["output_tokens"] <= questions.loc[row["id"], "max_tokens"] for s in row["samples"])


@pytest.mark.engine
def test_classify_json_example(cli, tmp_path, monkeypatch):
    df = pd.read_parquet(run_example(cli, tmp_path, monkeypatch, "classify-json", "--limit", 4) / "results")
    assert df["error_code"].isna().all()
    assert {json.loads(v)["topic"] for v in df["json"]} <= {
        "council", "schools", "transport", "health", "weather", "culture", "business", "other"}


@pytest.mark.engine
def test_reasoning_example(cli, tmp_path, monkeypatch):
    """jobs/reasoning.yaml with the embedded model in place of its reasoning model: SmolLM2 writes no
    </think>, so vLLM 0.32's qwen3 parser reads its whole text as reasoning (the split itself is
    tested on known texts in test_reasoning.py)."""
    out = run_example(cli, tmp_path, monkeypatch, "reasoning", "--limit", 3, "--set", "model.name=smollm2-135m-instruct",
                      "--set", "model.max_model_len=2048", "--set", "sampling.max_tokens=16")
    df = pd.read_parquet(out / "results")
    assert len(df) == 3 and df["error_code"].isna().all()
    assert df["reasoning"].notna().all() and ((df["reasoning"] + df["output"]).str.len() > 0).all()
