"""Crashes, signals and concurrent runs, with real processes and the real engine.

Each subprocess starts its own engine, so there are only two: one killed with SIGKILL, one
stopped with SIGTERM while a second run tries the same output.
"""

import json
import os
import signal
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import news_rows, start_batch_run, write_job, write_jsonl

from batch_runner.engines.reaper import descendants, started_at

pytestmark = pytest.mark.engine

ROWS = 40
JOB = dict(sampling={"max_tokens": 16}, output={"batch_size": 4})
# The killed runs take 4 sequences at a time, so that parts are committed while they run; engine
# settings are not part of the fingerprint, so the resumes run in-process on the tests' shared engine.
SLOW = ("--set", "engine.max_num_seqs=4")


def wait_for_parts(out, n, proc, timeout=600):
    """Wait until at least n result parts are committed; fail if the process ends first."""
    deadline = time.time() + timeout
    results = out / "results"
    while time.time() < deadline:
        parts = list(results.glob("part-*.parquet")) if results.exists() else []
        if len(parts) >= n:
            return parts
        if proc.poll() is not None:
            pytest.fail(f"batch-run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    pytest.fail("no result parts appeared in time")


def assert_exactly_once(out, n):
    for part in (out / "results").glob("*"):
        assert not part.name.startswith("."), f"temporary file left behind: {part}"
        pq.read_table(part)  # every part is a whole Parquet file
    df = pd.read_parquet(out / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(n))
    assert df["id"].is_unique


def engine_processes(pid):
    """The running descendants of pid, by pid and start time."""
    return descendants(pid)


def alive(pid, start):
    """Whether that process (not a later one with the same pid) still runs."""
    return started_at(pid) == start


def committed_rows(out) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (out / "results").glob("part-*.parquet"))


SHORT_ROWS = 15


def test_kill_9_keeps_every_finished_row_and_leaves_no_engine_process(cli, tmp_path):
    """One row of the first batch needs 300 tokens, the others 8. Its batch-mates must be committed
    within output.flush_s of finishing, not when it ends: kill -9 once every short row is finished, and
    the rerun has only the long row to run. No engine process may outlive the killed run."""
    rows = [{**r, "budget": 300 if i == 0 else 8} for i, r in enumerate(news_rows(SHORT_ROWS + 1))]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    job = write_job(tmp_path, input={"path": str(data)}, output={"batch_size": 4, "flush_s": 1.0},
                    sampling={"max_tokens": 8, "ignore_eos": True, "columns": {"max_tokens": "budget"}})
    out = tmp_path / "out"
    proc = start_batch_run("run", job, *SLOW)
    deadline = time.time() + 600
    while committed_rows(out) < SHORT_ROWS if (out / "results").exists() else True:
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"the short rows were not all committed ({proc.poll()}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    children = engine_processes(proc.pid)
    assert any("EngineCore" in open(f"/proc/{p}/cmdline").read() for p in children)
    os.kill(proc.pid, signal.SIGKILL)  # the runner alone, as the OOM killer does
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and (left := {p for p, start in children.items() if alive(p, start)}):
        time.sleep(0.5)
    assert not left, f"processes of the killed run still alive: {left}"
    df = pd.read_parquet(out / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in rows[1:])  # the long row alone is missing
    assert any("-f0" in p.name for p in (out / "results").glob("part-*"))  # committed before its batch ended

    result = cli("run", job)  # the long row alone runs
    assert result.exit_code == 0, result.output
    assert f"{SHORT_ROWS} were done before" in result.output
    assert_exactly_once(out, SHORT_ROWS + 1)


def test_sigterm_stops_cleanly_and_locks_out_a_second_run(cli, tmp_path):
    # the last four rows need 300 tokens each: the stop lands before they end, however fast the machine
    rows = [{**r, "budget": 300 if i >= ROWS - 4 else 16} for i, r in enumerate(news_rows(ROWS))]
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", rows))}, output=JOB["output"],
                    sampling={"max_tokens": 16, "ignore_eos": True, "columns": {"max_tokens": "budget"}})
    proc = start_batch_run("run", job, "--limit", ROWS, *SLOW)
    out = tmp_path / "out"
    wait_for_parts(out, 1, proc)

    second = cli("run", job, "--limit", ROWS, *SLOW)  # while the first still runs
    assert second.exit_code == 2
    assert "another run is writing to this output" in second.output

    os.killpg(proc.pid, signal.SIGTERM)  # as scancel and Slurm's time limit do
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == "SIGTERM"
    stats = pd.read_parquet(out / "stats")
    assert stats["requests"].sum() == summary["output"]["rows"] < ROWS

    result = cli("run", job, "--limit", ROWS)
    assert result.exit_code == 0, result.output
    assert_exactly_once(out, ROWS)


def test_sigterm_during_engine_start_stops_at_once(tmp_path):
    """A start takes minutes on a GPU: a stop then must not wait for it (nothing has run yet)."""
    proc = start_batch_run("run", write_job(tmp_path, **JOB), "--limit", 4, *SLOW)
    seen = []
    for line in proc.stdout:  # vLLM logs (on stdout) its engine's configuration as the start begins
        seen.append(line)
        if "Initializing a V1 LLM engine" in line or len(seen) > 2000:
            break
    stopped = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, "".join(seen[-20:]) + err[-3000:]
    assert "received while the engine was starting" in err
    assert time.time() - stopped < 30
    assert not (tmp_path / "out" / "results").exists()  # nothing ran
