"""The cloud schedulers' arrays (AWS Batch, Google Cloud Batch, Kubernetes Indexed Jobs): a task's
index is its shard, as in a Slurm array; bad or missing variables are refused; status says how to
rerun the missing indices there (fake engine, the CLI in this process, the variables set by hand)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import news_rows, write_job, write_jsonl

from batch_runner.executors.indexed import SCHEDULERS

ROWS = 12
SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_MIN")


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    """No scheduler's variables from the machine running the tests."""
    for var in [*SLURM, *(v for s in SCHEDULERS.values() for v in (s.index_var, s.count_var))]:
        monkeypatch.delenv(var, raising=False)


def task_env(kind: str, index: int, count: int) -> dict[str, str]:
    s = SCHEDULERS[kind]
    return {s.index_var: str(index), s.count_var: str(count)}


def set_env(monkeypatch, env: dict[str, str]) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)


@pytest.fixture
def job(fake, tmp_path):
    fake()
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    return write_job(tmp_path, input={"path": str(rows)}, output={"batch_size": 4})


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_each_index_runs_its_shard_and_the_array_completes_the_job(cli, job, tmp_path, monkeypatch, kind):
    out = tmp_path / "out"
    set_env(monkeypatch, task_env(kind, 1, 3))
    first = cli("run", job)
    assert first.exit_code == 0, first.output
    assert "index 1: shard 1/3" in first.output
    ran = set(pd.read_parquet(out / "results")["id"])
    assert 0 < len(ran) < ROWS
    by_hand = cli("run", job, "--shard", "1/3", "--output", tmp_path / "by-hand", "--executor", "local")
    assert by_hand.exit_code == 0, by_hand.output
    assert set(pd.read_parquet(tmp_path / "by-hand" / "results")["id"]) == ran  # index 1 of 3 is shard 1/3
    assert json.loads((out / "job.json").read_text())["job"]["executor"]["kind"] == kind

    status = cli("status", out)
    assert status.exit_code == 1
    assert "0001-of-0003  complete" in status.output and "0000-of-0003  missing" in status.output
    s = SCHEDULERS[kind]
    assert f"rerun ({s.title}): array indices 0,2 of 3" in status.output
    assert f"{s.index_var}=I {s.count_var}=3 batch-run JOB.yaml" in status.output
    assert "--array" not in status.output
    refused = cli("merge", out)
    assert refused.exit_code == 2 and f"run array indices 0,2 again (`batch-run status {out}` says how)" in refused.output

    for index in (2, 0):
        set_env(monkeypatch, task_env(kind, index, 3))
        assert cli("run", job).exit_code == 0
    assert cli("status", out).exit_code == 0
    assert cli("merge", out).exit_code == 0
    merged = pd.read_parquet(out / "merged" / "results.parquet")
    assert sorted(merged["id"]) == sorted(r["id"] for r in news_rows(ROWS)) and merged["id"].is_unique
    assert merged["error_code"].isna().all()


@pytest.mark.parametrize("env, kind", [
    ({}, "local"),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, "slurm"),
    *((task_env(k, 0, 2), k) for k in sorted(SCHEDULERS)),
    ({"JOB_COMPLETION_INDEX": "0"}, "kubernetes"),  # recognised by its index alone (its count may be executor.shards)
])
def test_auto_is_the_scheduler_whose_index_is_set(tmp_path, env, kind):
    from batch_runner.config import load_job
    from batch_runner.executors import executor_kind

    job = load_job(write_job(tmp_path))
    assert executor_kind(job, None, env) == kind
    assert executor_kind(job, "local", env) == "local"  # a kind named is the kind run


@pytest.mark.parametrize("env, says", [
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "x", "AWS_BATCH_JOB_ARRAY_SIZE": "3"},
     "AWS_BATCH_JOB_ARRAY_INDEX='x' is not a whole number"),
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "1", "AWS_BATCH_JOB_ARRAY_SIZE": "three"},
     "AWS_BATCH_JOB_ARRAY_SIZE='three' is not a whole number"),
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "3", "AWS_BATCH_JOB_ARRAY_SIZE": "3"},
     "AWS_BATCH_JOB_ARRAY_INDEX=3 is not an index of an array of 3 tasks (AWS_BATCH_JOB_ARRAY_SIZE=3): it must be 0 to 2"),
    ({"BATCH_TASK_INDEX": "-1", "BATCH_TASK_COUNT": "2"}, "BATCH_TASK_INDEX=-1 is not an index of an array of 2 tasks"),
    ({"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "0"}, "BATCH_TASK_COUNT=0: an array has at least 1 task"),
    ({"BATCH_TASK_INDEX": "0"}, "BATCH_TASK_INDEX=0 but the number of tasks is unknown (BATCH_TASK_COUNT is not set)"),
    ({"JOB_COMPLETION_INDEX": "1"}, ("JOB_COMPLETION_INDEX=1 but the number of tasks is unknown (BATCH_RUN_SHARDS is "
                                     "not set): set BATCH_RUN_SHARDS in the manifest to the Job's spec.completions")),
    ({"JOB_COMPLETION_INDEX": "1", "AWS_BATCH_JOB_ARRAY_INDEX": "1", "AWS_BATCH_JOB_ARRAY_SIZE": "3"},
     "more than one scheduler: aws_batch (AWS_BATCH_JOB_ARRAY_INDEX), kubernetes (JOB_COMPLETION_INDEX); choose one"),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "3"},
     "more than one scheduler: slurm (SLURM_ARRAY_TASK_ID), gcp_batch (BATCH_TASK_INDEX)"),
], ids=["index", "count", "index-past-count", "negative", "count-0", "no-count", "k8s-no-count", "two", "slurm-too"])
def test_bad_variables_are_refused_before_anything_is_written(cli, job, tmp_path, monkeypatch, env, says):
    set_env(monkeypatch, env)
    result = cli("run", job)
    assert result.exit_code == 2
    assert says in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_named_scheduler_outside_its_array_is_refused_and_one_named_wins_over_auto(cli, job, tmp_path, monkeypatch):
    refused = cli("run", job, "--executor", "kubernetes")
    assert refused.exit_code == 2 and "not in a task of a Kubernetes Indexed Job (JOB_COMPLETION_INDEX is not set)" \
        in " ".join(refused.output.split())
    set_env(monkeypatch, {"JOB_COMPLETION_INDEX": "0", "BATCH_RUN_SHARDS": "2", **task_env("aws_batch", 1, 2)})
    chosen = cli("run", job, "--executor", "aws_batch")
    assert chosen.exit_code == 0 and "AWS Batch array job index 1: shard 1/2" in chosen.output


def test_kubernetes_takes_its_count_from_executor_shards_which_must_agree_with_the_variable(cli, job, tmp_path,
                                                                                           monkeypatch):
    set_env(monkeypatch, {"JOB_COMPLETION_INDEX": "2"})
    done = cli("run", job, "--set", "executor.shards=3")
    assert done.exit_code == 0 and "index 2: shard 2/3" in done.output
    monkeypatch.setenv("BATCH_RUN_SHARDS", "4")
    refused = cli("run", job, "--set", "executor.shards=3")
    assert refused.exit_code == 2 and "BATCH_RUN_SHARDS=4 but executor.shards is 3" in refused.output


def test_an_array_of_another_size_is_refused_naming_the_outputs(cli, job, tmp_path, monkeypatch):
    set_env(monkeypatch, task_env("gcp_batch", 0, 3))
    assert cli("run", job).exit_code == 0
    set_env(monkeypatch, task_env("gcp_batch", 0, 2))
    refused = cli("run", job)
    assert refused.exit_code == 2
    assert "BATCH_TASK_COUNT=2: this output was split into 3 array tasks by its first run" in refused.output
    assert cli("run", job, "--fresh").exit_code == 0  # --fresh starts over, with the new size
    assert json.loads((tmp_path / "out" / "job.json").read_text())["fingerprint"]["shards"] == 2


class _InProcess:
    """The node executor's workers one after the other in this process (the fake engine is patched in
    here; spawned workers would import the real one)."""

    def __init__(self, workers, progress):
        self.workers, self.codes = workers, []

    def start(self, job, retry_errors, verbose, inputs):
        from batch_runner.runner.shard import RunOptions, run_shard

        for w, given in zip(self.workers, inputs):
            result = run_shard(job, RunOptions(shard=w.shard, progress=False, given=given))
            w.summary = result.summary
            self.codes.append(int(result.status))

    def wait(self):
        return self.codes


def test_with_data_parallel_index_i_runs_its_engines_shards(cli, job, tmp_path, monkeypatch):
    """Index I of N with D engines: shards I*D .. I*D+D-1 of N*D; status names array indices."""
    monkeypatch.setattr("batch_runner.executors.node.Workers", _InProcess)
    monkeypatch.setattr("batch_runner.executors.node.visible_devices", lambda env: [])
    set_env(monkeypatch, task_env("aws_batch", 1, 2))
    result = cli("run", job, "--set", "executor.data_parallel=2")
    assert result.exit_code == 0, result.output
    status = cli("status", tmp_path / "out")
    assert "0002-of-0004  complete" in status.output and "0003-of-0004  complete" in status.output
    assert "rerun (AWS Batch array job): array indices 0 of 2" in status.output
    assert "AWS_BATCH_JOB_ARRAY_INDEX=I AWS_BATCH_JOB_ARRAY_SIZE=2 batch-run" in status.output


def test_outside_any_array_status_keeps_the_slurm_hint(cli, job, tmp_path):
    assert cli("run", job, "--shard", "0/2").exit_code == 0
    status = cli("status", tmp_path / "out")
    assert "resubmit: --array=1" in status.output and "rerun (" not in status.output
