"""The executors: one registry for config and CLI, executor.data_parallel (and its former name),
and one pre-flight for the shards a parent runs side by side (fake engine, no real one)."""

from __future__ import annotations

import json
import logging
import typing

import click
import pytest
from conftest import news_rows, write_job, write_jsonl

from batch_runner.cli import run_cmd
from batch_runner.config import ExecutorSpec, load_job
from batch_runner.executors import EXECUTORS, KINDS, execute
from batch_runner.inputs import preflight as preflight_module
from batch_runner.output import resume
from batch_runner.runner.shard import RunOptions, run_shard


def test_the_registry_config_and_cli_offer_the_same_executors():
    assert set(typing.get_args(ExecutorSpec.model_fields["kind"].annotation)) == {"auto", *EXECUTORS}
    assert KINDS == ("auto", *EXECUTORS)
    option = next(p for p in run_cmd.params if p.name == "executor")
    assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == KINDS
    assert all(cls.name == name for name, cls in EXECUTORS.items())


class _Said(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def said():
    handler, logger = _Said(), logging.getLogger("batch_runner")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_engine_data_parallel_reads_as_executor_data_parallel_with_a_note(tmp_path, said):
    job = load_job(write_job(tmp_path), ["engine.data_parallel=2"])
    assert job.executor.data_parallel == 2
    assert "data_parallel" not in job.engine.model_dump()
    assert said == ["engine.data_parallel is now executor.data_parallel; read as such"]
    said.clear()
    assert load_job(write_job(tmp_path), ["executor.data_parallel=auto"]).executor.data_parallel == "auto"
    assert said == []


def test_both_data_parallel_keys_are_refused(tmp_path):
    from batch_runner.errors import JobError

    with pytest.raises(JobError, match="give executor.data_parallel only"):
        load_job(write_job(tmp_path), ["engine.data_parallel=2", "executor.data_parallel=2"])


def test_status_reads_data_parallel_from_either_key(tmp_path):
    from batch_runner.output.status import array_size

    for job in ({"engine": {"data_parallel": 2}}, {"executor": {"data_parallel": 2}, "engine": {}}):
        (tmp_path / "job.json").write_text(json.dumps({"fingerprint": {"shards": 6}, "job": job}))
        assert array_size(tmp_path) == 3


def test_an_output_of_an_older_batch_run_with_engine_data_parallel_resumes(fake, tmp_path):
    """The fingerprint never held data_parallel: an output whose job.json has engine.data_parallel
    (written before the key moved) resumes as it is."""
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(12))
    path = write_job(tmp_path, input={"path": str(rows)})
    fake()
    job = load_job(path)
    assert run_shard(job, RunOptions()).status == 0
    record = json.loads((job.output_dir / "job.json").read_text())
    assert "data_parallel" not in json.dumps(record["fingerprint"])
    record["job"]["engine"]["data_parallel"] = 1  # as an older batch-run wrote it
    del record["job"]["executor"]["data_parallel"]
    (job.output_dir / "job.json").write_text(json.dumps(record))
    again = run_shard(load_job(path, ["engine.data_parallel=1"]), RunOptions())
    assert again.status == 0 and again.summary.this_run.requests == 0


class _InProcess:
    """The node executor's workers, run one after the other in this process (the fake engine is
    patched in here; spawned workers would import the real one)."""

    def __init__(self, workers, progress):
        self.workers, self.codes = workers, []

    def start(self, job, retry_errors, verbose, inputs):
        for w, given in zip(self.workers, inputs):
            result = run_shard(job, RunOptions(shard=w.shard, retry_errors=retry_errors, progress=False, given=given))
            w.summary = result.summary
            self.codes.append(int(result.status))

    def wait(self):
        return self.codes


def test_data_parallel_reads_the_input_once_before_its_shards_run(fake, tmp_path, monkeypatch):
    """D=2: the parent's one pre-flight passes over the input once and hashes it once (before:
    three times each, the parent's and each worker's); each shard still runs exactly its rows."""
    passes = {"check": 0, "hash": 0}

    def counted(name, real):
        def wrapper(*a, **kw):
            passes[name] += 1
            return real(*a, **kw)
        return wrapper

    monkeypatch.setattr(preflight_module, "check_input", counted("check", preflight_module.check_input))
    monkeypatch.setattr(preflight_module, "files_content", counted("hash", preflight_module.files_content))
    monkeypatch.setattr("batch_runner.executors.node.Workers", _InProcess)
    monkeypatch.setattr("batch_runner.executors.node.visible_devices", lambda env: [])
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(20))
    fake()
    job = load_job(write_job(tmp_path, input={"path": str(rows)}, executor={"data_parallel": 2}))
    done = execute(job, RunOptions(), "local")
    assert int(done.status) == 0 and done.engines == 2
    assert passes == {"check": 1, "hash": 1}
    assert sorted(s.shard for s in done.summaries) == ["0000-of-0002", "0001-of-0002"]
    assert sum(s.shard_rows for s in done.summaries) == 20
    assert all(s.output.rows == s.shard_rows for s in done.summaries)
    recorded = json.loads((job.output_dir / "job.json").read_text())
    assert recorded["job"]["executor"]["data_parallel"] == 2 and recorded["fingerprint"]["shards"] == 2
    assert resume.read_job_record(job.output_dir)["fingerprint_hash"] == recorded["fingerprint_hash"]


@pytest.mark.parametrize("affinity", [False, True], ids=["hash", "affinity"])
def test_each_shards_share_of_the_one_preflight_is_its_own_preflight(tmp_path, affinity):
    from batch_runner.inputs.assignment import Shard

    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(20))
    job = load_job(write_job(tmp_path, input={"path": str(rows), "limit": 15},
                             prompt={"prefix_affinity": affinity}))
    shards = [Shard(2, 4), Shard(3, 4)]  # array task 1 of 2, with two engines
    pre, shares = preflight_module.preflight_shards(job, shards)
    for shard, share in zip(shards, shares):
        own = preflight_module.preflight(job, shard).report
        assert (share.report.shard_ids, share.report.ids_beyond_limit) == (own.shard_ids, own.ids_beyond_limit)
        assert (share.report.shard_rows, share.report.rows_beyond_limit) == (own.shard_rows, own.rows_beyond_limit)
        assert share.report.content == own.content and share.report.assignment == own.assignment
        assert (own.assignment is not None) == affinity
    assert pre.report.shard_ids == shares[0].report.shard_ids | shares[1].report.shard_ids
