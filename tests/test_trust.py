"""What a run trusts in its output folder: regression tests of issue 25 (items 1, 4, 5, 10).

A resumed run verifies the input's content, not its size; parts batch-run did not write for this
output are refused, never counted as done; --fresh acts only after every check; a busy output is
refused before the pre-flight. Through the CLI in-process, with the fake engine.
"""

import hashlib
import json

import pytest

from batch_runner.checkpoint import OutputLock
from conftest import news_rows, write_job, write_jsonl


def snapshot(folder) -> dict:
    """Every file under folder (links too, not followed) with its bytes' digest: what 'unchanged' means."""
    return {str(p.relative_to(folder)): (p.is_symlink(), hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def done(cli, fake, tmp_path):
    """A complete output of 30 rows; returns (job file, input file, output folder)."""
    fake()
    path = write_jsonl(tmp_path / "in.jsonl", news_rows(30))
    job = write_job(tmp_path, input={"path": str(path)}, output={"batch_size": 8})
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    return job, path, tmp_path / "out"


# 5. --fresh acts only after every check that can refuse the run
LATE_CHECKS = {
    "engine.extra key vLLM lacks": (["--set", "engine.extra.bogus_key=1"], "engine.extra.bogus_key"),
    "engine.extra key vLLM lacks, data_parallel": (["--set", "engine.extra.bogus_key=1",
                                                    "--set", "engine.data_parallel=2"], "engine.extra.bogus_key"),
    "sampling value vLLM rejects": (["--set", "sampling.temperature=-1"], "sampling"),
    "template column in no row": (["--set", "prompt.template='{{ nosuch }}'"], "nosuch"),
}


@pytest.mark.parametrize("case", sorted(LATE_CHECKS))
def test_fresh_changes_nothing_when_any_check_refuses_the_run(cli, done, tmp_path, case):
    job, _, out = done
    args, named = LATE_CHECKS[case]
    before = snapshot(tmp_path)
    result = cli("run", job, "--fresh", *args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert snapshot(tmp_path) == before  # no job.json rewritten, nothing moved aside
    assert not list(tmp_path.glob("out.replaced-*"))


# 10. a busy output is refused before the pre-flight, and the refusal creates and changes nothing
BUSY = {
    "local": ([], ["0000-of-0001"], {}),
    "--shard": (["--shard", "1/2"], ["0001-of-0002"], {}),
    "data_parallel": (["--set", "engine.data_parallel=2"], ["0000-of-0002", "0001-of-0002"], {}),
    "slurm array task": ([], ["0001-of-0002"], {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2",
                                                 "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1"}),
}


@pytest.mark.parametrize("case", sorted(BUSY))
def test_a_busy_output_is_refused_before_the_preflight(cli, fake, tmp_path, monkeypatch, case):
    args, held, env = BUSY[case]
    fake()
    path = write_jsonl(tmp_path / "in.jsonl", news_rows(6))
    job = write_job(tmp_path, input={"path": str(path)})
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def too_late(*a, **kw):
        raise AssertionError("the pre-flight ran on a busy output")
    monkeypatch.setattr("batch_runner.runner.preflight", too_late)
    locks = [OutputLock(tmp_path / "out", label) for label in held]
    for lock in locks:
        lock.acquire()
    try:
        before = snapshot(tmp_path)
        result = cli("run", job, "--fresh", *args)
        after = snapshot(tmp_path)
    finally:
        for lock in locks:
            lock.release()
    assert result.exit_code == 2, result.output
    assert "another run is writing to this output" in result.output and f"pid " in result.output
    assert after == before


def test_a_run_over_another_split_of_a_busy_output_is_refused_before_the_preflight(cli, fake, tmp_path,
                                                                                   monkeypatch):
    fake()
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", news_rows(6)))})
    assert cli("run", job, "--shard", "0/2").exit_code == 0
    monkeypatch.setattr("batch_runner.runner.preflight", lambda *a: pytest.fail("the pre-flight ran"))
    with OutputLock(tmp_path / "out", "0001-of-0002"):  # an array task runs shard 1 of 2 now
        before = snapshot(tmp_path)
        result = cli("run", job, "--fresh")  # one shard of all the rows: a different job
        assert snapshot(tmp_path) == before
    assert result.exit_code == 2 and "another run is writing to this output" in result.output
