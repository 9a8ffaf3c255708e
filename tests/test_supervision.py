"""The runner watches its engine: a death, a stall or a poison request costs a restart, never a hang.

The fake engine's failures (engine.extra: fail_after, fail_as, fail_starts, poison) cover the runner's
logic in seconds; the last test kills the real CPU engine's core process twice with SIGKILL.
"""

import json
import os
import signal
import subprocess
import threading
import time

import pandas as pd
import psutil
import pytest
from conftest import ROOT, batch_run_cmd, news_rows, write_job, write_jsonl

from batch_runner.runner.recovery import MAX_WAVE, PROBATION_STEPS, Recovery

ROWS = 40


def job_file(tmp_path, rows=ROWS, engine=None, **sections):
    data = write_jsonl(tmp_path / "in.jsonl", news_rows(rows))
    sections.setdefault("output", {}).setdefault("batch_size", 4)
    return write_job(tmp_path, input={"path": str(data)}, engine={"backend": "fake", **(engine or {})}, **sections)


def results(tmp_path) -> pd.DataFrame:
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS)) and df["id"].is_unique
    return df


def summary(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_an_engine_that_dies_is_restarted_within_seconds_and_every_row_is_answered(cli, tmp_path):
    job = job_file(tmp_path, engine={"stall_timeout_s": 600, "extra": {"per_poll": 2, "fail_after": 4}},
                   output={"batch_size": 4, "metrics_dir": str(tmp_path / "metrics")})
    began = time.monotonic()
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    assert time.monotonic() - began < 30  # seen by its process's end, not by the 600 s stall bound
    assert results(tmp_path)["error_code"].isna().all()
    s = summary(tmp_path)
    assert s["this_run"]["engine_restarts"] == 1
    [failure] = s["engine_failures"]
    assert "process ended: killed by signal 9" in failure["cause"] and failure["quarantined"] == 0
    assert "restarting it (restart 1 of at most 2)" in result.output
    metrics = next((tmp_path / "metrics").glob("*.prom")).read_text()
    assert 'batch_run_engine_restarts_total{batch_job="summarize",shard="0000-of-0001"} 1.0' in metrics
    report = cli("report", tmp_path / "out")
    assert "engine  failed 1 time in the latest runs" in report.output and "killed by signal 9" in report.output
    assert "restarted 1 time; last failure: fake engine process ended" in result.output  # the closing table


def test_each_shard_of_a_node_run_restarts_its_own_engine(cli, tmp_path):
    job = job_file(tmp_path, engine={"extra": {"per_poll": 2, "fail_after": 3}}, executor={"data_parallel": 2})
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    results(tmp_path)
    for label in ("0000-of-0002", "0001-of-0002"):
        s = json.loads((tmp_path / "out" / f"summary-{label}.json").read_text())
        assert s["this_run"]["engine_restarts"] == 1, s


def test_an_engine_that_stalls_is_restarted_after_the_stall_timeout(cli, tmp_path):
    job = job_file(tmp_path, engine={"stall_timeout_s": 1.5, "extra": {"fail_after": 3, "fail_as": "stall"}})
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    results(tmp_path)
    [failure] = summary(tmp_path)["engine_failures"]
    assert failure["cause"].startswith("no engine step ended in 2 s") and "engine.stall_timeout_s 1.5" in failure["cause"]


@pytest.mark.parametrize("fail_as", ["stall", "death"])
def test_a_poison_request_is_quarantined_and_the_job_goes_on(cli, fake, tmp_path, fail_as):
    job = job_file(tmp_path, engine={"stall_timeout_s": 1.5, "extra": {"poison": [":2:1"], "fail_as": fail_as}})
    result = cli("run", job)
    assert result.exit_code == 3, result.output  # rows with errors
    df = results(tmp_path)
    failed = df[df["error_code"] == "engine_failed"]
    poison = news_rows(ROWS)[9]["id"]  # batch 2, position 1
    assert poison in set(failed["id"])
    # after a stall the poison is the oldest in flight and goes back alone; a death spares all but its wave
    assert len(failed) == 1 if fail_as == "stall" else len(failed) <= MAX_WAVE
    assert "twice in a row with this request in flight" in failed["error"].iloc[0]
    assert (df["error_code"].isna() | (df["error_code"] == "engine_failed")).all()
    assert summary(tmp_path)["this_run"]["engine_restarts"] == 2

    engine = fake(poison=[":2:1"], fail_as=fail_as)
    again = cli("run", job)  # the quarantined row is not sent again: no loop across reruns
    assert again.exit_code == 3 and engine.submitted == []
    cli("run", job, "--retry-errors")  # unless asked
    assert len(engine.submitted) == len(failed)


def test_past_max_restarts_the_run_ends_with_exit_1_naming_the_cause_and_keeps_what_finished(cli, tmp_path):
    job = job_file(tmp_path, engine={"max_restarts": 1, "extra": {"per_poll": 2, "fail_after": 3, "fail_starts": 99}})
    began = time.monotonic()
    result = cli("run", job)
    assert result.exit_code == 1
    assert time.monotonic() - began < 30
    assert "the engine failed 2 times in this run, more than engine.max_restarts (1) allows" in result.output
    assert "fake engine process ended: killed by signal 9" in result.output and "Traceback" not in result.output
    saved = pd.read_parquet(tmp_path / "out" / "results")
    assert len(saved) >= 6 and saved["id"].is_unique  # three polls of two rows before each failure
    rerun = cli("run", job.with_name("job.yaml"), "--set", "engine.extra.fail_after=null")
    assert rerun.exit_code == 0, rerun.output
    results(tmp_path)


def test_probation_sends_the_suspects_back_in_growing_waves():
    r = Recovery(max_restarts=2)
    keys = [f"k{i}" for i in range(40)]
    assert r.failed("died", keys) == []
    flight = dict.fromkeys(keys)
    sizes = []
    while wave := r.next_wave(flight):
        sizes.append(len(wave))
        assert r.next_wave(flight) == []  # the next waits for this one's steps
        for _ in range(PROBATION_STEPS):
            r.stepped(flight)
    assert sizes == [1, 1, 2, 4, 8, 16, 8] and not r.active
    r.waiting.extend(["a", "b", "c"])  # a second failure while a wave is on probation quarantines it
    assert r.next_wave(dict.fromkeys(["a", "c", "k1"])) == ["a", "c"]  # "b" left the flight (aborted)
    assert r.failed("died again", ["k1", "a", "c"]) == ["a", "c"] and r.restarts == 2 and not r.exhausted
    assert list(r.waiting) == ["k1"]  # in flight at both, but its probation had passed
    r.failed("a third time", [])
    assert r.exhausted and r.restarts == 2


def test_no_wave_goes_while_the_engine_has_no_room_to_run_it_at_once():
    r = Recovery(max_restarts=2)
    r.failed("died", ["a", "b"])
    assert r.next_wave({"a": 1, "b": 1}, room=False) == [] and r.active
    assert r.next_wave({"a": 1, "b": 1}, room=True) == ["a"]


def test_a_wave_whose_requests_all_finished_has_passed():
    r = Recovery(max_restarts=2)
    r.failed("died", ["a", "b"])
    assert r.next_wave({"a": 1, "b": 1}) == ["a"]
    r.stepped({"b": 1})  # "a" finished in one step: no more steps would come from an idle engine
    assert r.next_wave({"b": 1}) == ["b"]


def _engine_cores(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
                found.append(child)
        except psutil.Error:
            pass
    return found


class _Lines:
    """A child's stderr, read as it comes (the test waits for lines)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(stream), daemon=True).start()

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float, times: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < times:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r}:\n" + "".join(self.lines)[-4000:])
            time.sleep(0.2)


def _kill_core(proc: subprocess.Popen, lines: _Lines) -> int:
    deadline = time.monotonic() + 300
    while not (cores := _engine_cores(proc.pid)):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("no engine core process:\n" + "".join(lines.lines)[-4000:])
        time.sleep(0.5)
    cores[0].send_signal(signal.SIGKILL)
    return cores[0].pid


@pytest.mark.engine
def test_the_real_engine_core_killed_twice_mid_run_the_run_still_answers_every_row_once(tmp_path):
    rows = 128
    data = write_jsonl(tmp_path / "in.jsonl", news_rows(rows))
    job = write_job(tmp_path, input={"path": str(data)}, sampling={"max_tokens": 24},
                    output={"batch_size": 8}, engine={"max_num_seqs": 16})
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(batch_run_cmd("run", job, "--verbose"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = _Lines(proc.stderr)
    try:
        for n in (1, 2):
            parts = len(list((tmp_path / "out" / "results").glob("part-*.parquet")))
            deadline = time.monotonic() + 300
            while len(list((tmp_path / "out" / "results").glob("part-*.parquet"))) <= parts:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("no new part:\n" + "".join(lines.lines)[-4000:])
                time.sleep(0.2)
            killed = _kill_core(proc, lines)
            lines.wait_for(f"restarting it (restart {n} of at most 2)", proc, 60)
            assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
            lines.wait_for("are all back in it", proc, 300, times=n)  # (a kill on probation would quarantine its wave)
        assert proc.wait(timeout=600) == 0, "".join(lines.lines)[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(rows)) and df["id"].is_unique
    assert df["error_code"].isna().all() and df["output"].str.len().gt(0).all()
    s = summary(tmp_path)
    assert s["this_run"]["engine_restarts"] == 2 and len(s["engine_failures"]) == 2
    assert all("EngineCore" in f["cause"] and "signal 9" in f["cause"] for f in s["engine_failures"])
