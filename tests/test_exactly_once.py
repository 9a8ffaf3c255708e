"""Every id exactly once, on every path a run can end by: the runner's own logic, with the fake engine.

These cover in seconds what would take minutes with a real engine start each. The same paths with
vLLM are in test_crash_safety (kill -9, SIGTERM) and test_end_to_end.
"""

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from conftest import ROOT, batch_run_cmd, fake_job, last_row_key, news_rows, write_job, write_jsonl

ROWS = 40


def job_file(tmp_path, rows=ROWS, **sections):
    data = write_jsonl(tmp_path / "in.jsonl", news_rows(rows))
    sections.setdefault("output", {}).setdefault("batch_size", 4)
    return write_job(tmp_path, input={"path": str(data)}, **sections)


def results(tmp_path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out" / "results")


def assert_every_id_once(tmp_path, rows=ROWS) -> pd.DataFrame:
    df = results(tmp_path)
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(rows))
    assert df["id"].is_unique
    return df


def start_fake_run(job, **settings) -> subprocess.Popen:
    """The CLI with the fake engine (engine.backend: fake, these settings), in a process of its own
    (for paths that end the process)."""
    # PYTHONPATH: this checkout's package, wherever the .venv was installed from
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(batch_run_cmd("run", fake_job(job, **settings)), cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_parts(out, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((out / "results").glob("part-*.parquet"))) >= n:
            return
        if proc.poll() is not None:
            pytest.fail("the run ended first:\n" + proc.stderr.read()[-3000:])
        time.sleep(0.05)
    pytest.fail(f"no {n} parts within {timeout} s")


def test_a_stop_saves_the_finished_rows_of_open_batches_and_the_rerun_runs_the_rest(cli, fake, tmp_path):
    job = job_file(tmp_path)
    engine = fake(per_poll=3, on_poll=lambda n: n == 3 and os.kill(os.getpid(), signal.SIGTERM))
    stopped = cli("run", job)
    assert stopped.exit_code == 75, stopped.output
    first = results(tmp_path)
    assert len(first) == 9  # the rows of the three polls up to the stop, and no other
    assert (first.groupby("batch").size() < 4).any()  # a batch cut short was committed as it stood
    assert len(engine.submitted) > len(first)  # the rest were in the engine and aborted

    again = fake()
    assert cli("run", job).exit_code == 0
    assert len(again.submitted) == ROWS - 9  # only the rows without a result ran again
    assert_every_id_once(tmp_path)


def test_retry_errors_runs_only_the_error_rows_again(cli, fake, tmp_path):
    job = job_file(tmp_path)
    fake(reject=lambda request: request.position == 0)  # the first row of every batch is refused
    assert cli("run", job).exit_code == 3
    assert results(tmp_path)["error_code"].eq("engine_rejected").sum() == ROWS // 4

    plain = fake()
    assert cli("run", job).exit_code == 3  # a plain rerun leaves error rows alone
    assert plain.submitted == []
    retry = fake()
    assert cli("run", job, "--retry-errors").exit_code == 0
    assert len(retry.submitted) == ROWS // 4
    df = assert_every_id_once(tmp_path)
    assert df["error_code"].isna().all()


class Crash(BaseException):
    """The process dying at that point (nothing catches it)."""


def test_a_crash_between_a_part_and_its_stats_loses_no_row(cli, fake, tmp_path, monkeypatch):
    import batch_runner.runner.commit as commit

    job = job_file(tmp_path)
    calls, real = [], commit.batch_stats

    def crash_on_the_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the part is written; the process dies before its stats row
            raise Crash
        return real(*args, **kw)

    monkeypatch.setattr(commit, "batch_stats", crash_on_the_third)
    fake()
    with pytest.raises(Crash):
        cli("run", job)
    assert len(results(tmp_path)) == 12  # three parts, the third without its stats row
    monkeypatch.setattr(commit, "batch_stats", real)
    again = fake()
    assert cli("run", job).exit_code == 0
    assert len(again.submitted) == ROWS - 12
    assert_every_id_once(tmp_path)


def test_kill_9_between_commits_then_the_rerun_runs_exactly_the_rest(cli, fake, tmp_path):
    job = job_file(tmp_path)
    proc = start_fake_run(job, per_poll=2, latency_s=0.05, hold=[last_row_key(ROWS, 4)])
    wait_for_parts(tmp_path / "out", 3, proc)
    proc.kill()
    proc.communicate()
    done = len(results(tmp_path))
    assert 12 <= done < ROWS
    again = fake()
    assert cli("run", job).exit_code == 0
    assert len(again.submitted) == ROWS - done
    assert_every_id_once(tmp_path)


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_sigint_after_a_stop_exits_at_once_and_committed_rows_stay(cli, fake, tmp_path, first):
    job = job_file(tmp_path)
    proc = start_fake_run(job, per_poll=1, hang_after=6)  # the engine stops answering: a stop cannot finish
    wait_for_parts(tmp_path / "out", 1, proc)
    time.sleep(0.5)  # until the engine has stopped answering: else the stop ends before the second signal
    proc.send_signal(first)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # a person pressing Ctrl-C (again)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr[-2000:]
    assert "second signal, exiting at once" in stderr
    fake()
    assert cli("run", job).exit_code == 0
    assert_every_id_once(tmp_path)


def test_repeated_sigterms_are_one_stop(cli, fake, tmp_path):
    """Schedulers repeat SIGTERM (scancel retries it while slurmctld is busy): one stop, exit 75."""
    job = job_file(tmp_path)
    # the engine stops answering, so the stop lasts until its grace period ends; the repeats land in it
    proc = start_fake_run(job, per_poll=1, hang_after=6, stop_grace_s=4.0)
    wait_for_parts(tmp_path / "out", 1, proc)
    time.sleep(0.3)
    for _ in range(3):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stderr[-2000:]
    assert "SIGTERM again: already stopping" in stderr and "second signal" not in stderr
    assert len(results(tmp_path)) == 6  # every finished row saved
    fake()
    assert cli("run", job).exit_code == 0
    assert_every_id_once(tmp_path)


def test_a_sigterm_during_the_engines_teardown_ends_with_the_runs_status(cli, fake, tmp_path):
    """The run stopped and saved its rows; the scheduler's repeated SIGTERM comes while the engine
    shuts down (seconds with vLLM): the process still ends 75, at once, not killed by the signal."""
    job = job_file(tmp_path)
    # the last row never ends (the stop aborts it): the run is mid-way when the first SIGTERM comes
    proc = start_fake_run(job, per_poll=1, latency_s=0.05, close_s=60.0, hold=[last_row_key(ROWS, 4)])
    wait_for_parts(tmp_path / "out", 1, proc)
    proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 60
    while not (tmp_path / "out" / "summary.json").exists():  # written before the teardown
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)  # not the 60 s of the teardown
    assert proc.returncode == 75, stderr[-2000:]
    assert "SIGTERM received while shutting down; exiting now (status 75)" in stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "interrupted"


def test_a_stop_during_the_preflight_is_a_stop_not_a_death_by_signal(tmp_path):
    """Slurm's time limit may come while a requeued task reads its input (seconds per million rows):
    the task must still end 75, which the sbatch script requeues, not 143, and create nothing."""
    job = job_file(tmp_path)
    proc = start_fake_run(job, slow_preflight_s=60)
    deadline = time.time() + 60
    while "fake: pre-flight began" not in proc.stderr.readline():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)  # not the 60 s of the pre-flight
    assert proc.returncode == 75, stderr[-2000:]
    assert "SIGTERM received before the run began; nothing to save" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_an_engine_that_does_not_stop_is_left_after_the_grace_period(cli, fake, tmp_path):
    job = job_file(tmp_path)
    proc = start_fake_run(job, per_poll=1, hang_after=6, stop_grace_s=1.0)
    wait_for_parts(tmp_path / "out", 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 75, stderr[-2000:]
    assert time.time() - t0 < 10
    assert "the engine did not stop in time; finished rows saved" in stderr
    assert len(results(tmp_path)) == 6  # every finished row, the open batch's too
    again = fake()
    assert cli("run", job).exit_code == 0
    assert len(again.submitted) == ROWS - 6
    assert_every_id_once(tmp_path)


def test_finished_rows_are_committed_within_flush_s_while_their_batch_runs(cli, fake, tmp_path):
    """Row 0 never finishes; its batch-mates must not wait for it: after kill -9 they are committed."""
    import pyarrow.parquet as pq

    job = job_file(tmp_path, rows=12, output={"batch_size": 4, "flush_s": 0.3})
    proc = start_fake_run(job, per_poll=2, latency_s=0.05, hold=[":0:0"])
    parts = tmp_path / "out" / "results"
    deadline = time.time() + 60
    while sum(pq.read_metadata(p).num_rows for p in parts.glob("part-*.parquet")) < 11:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    assert any("-f0" in p.name for p in parts.glob("part-*"))  # a flush part, before batch 0 ended
    again = fake()
    assert cli("run", job).exit_code == 0
    assert len(again.submitted) == 1  # only the row that had not finished
    assert_every_id_once(tmp_path, rows=12)


@pytest.mark.parametrize("trouble", ["a commit that never ends holds the lock", "the save fails (a full disk)"])
def test_the_stop_watchdog_exits_75_whatever_the_save_does(monkeypatch, capsys, trouble):
    """The watchdog is the way out when the engine does not stop: nothing it does may keep it from exiting."""
    import threading
    from types import SimpleNamespace

    from batch_runner.logs import setup_logging
    from batch_runner.runner import pipeline

    setup_logging(False)  # as the CLI and each node worker do: the message goes to stderr

    class Exited(BaseException):
        pass

    def exit_(code):
        raise Exited(code)

    def full_disk(batch):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "HARD_STOP_LOCK_S", 0.2)
    monkeypatch.setattr(pipeline.os, "_exit", exit_)
    this = SimpleNamespace(lock=threading.Lock(), open={1: "batch"}, _end=lambda: None, _commit=full_disk)
    if trouble.startswith("a commit"):
        this.lock.acquire()  # held by a main thread that is stuck
    with pytest.raises(Exited) as exited:
        pipeline.Pipeline.hard_stop(this)
    assert exited.value.args == (75,)
    said = capsys.readouterr().err
    assert "finished rows of open batches not saved" in said and "they run on resume" in said, said
