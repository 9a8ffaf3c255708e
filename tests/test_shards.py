"""Shards as separate runs over one input and output (Slurm variables set by hand), then status and merge."""

import json

import pandas as pd
import pytest
from conftest import news_rows, write_job, write_jsonl

pytestmark = pytest.mark.engine

ROWS = 12


def test_slurm_array_shards_status_and_merge(cli, tmp_path, monkeypatch):
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))  # the whole input: shards can complete
    job = write_job(tmp_path, sampling={"max_tokens": 8}, output={"batch_size": 4}, input={"path": str(rows)})
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert cli("run", job).exit_code == 0

    status = cli("status", out)
    assert status.exit_code == 1
    assert "0000-of-0003  complete" in status.output
    assert "0001-of-0003  missing" in status.output
    assert "resubmit: --array=1-2" in status.output
    refused = cli("merge", out)
    assert refused.exit_code == 2 and "shards not complete: 1-2" in refused.output

    for task in ("1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        result = cli("run", job)
        assert result.exit_code == 0, result.output

    assert cli("status", out).exit_code == 0
    merged = cli("merge", out)
    assert merged.exit_code == 0, merged.output
    df = pd.read_parquet(out / "merged" / "results.parquet")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS))
    assert df["id"].is_unique
    assert len(pd.read_parquet(out / "results")) == ROWS  # the unmerged folder reads as one dataset too
    per_shard = [json.loads((out / f"summary-000{i}-of-0003.json").read_text())["shard_rows"] for i in range(3)]
    assert sum(per_shard) == ROWS


def test_changed_shard_count_is_refused(cli, tmp_path):
    job = write_job(tmp_path, sampling={"max_tokens": 8})
    assert cli("run", job, "--limit", 4, "--shard", "0/2").exit_code == 0
    result = cli("run", job, "--limit", 4, "--shard", "0/3")
    assert result.exit_code == 2
    assert "shards: 2 -> 3" in result.output
