"""executor.data_parallel: several engine processes on one node, each its own shard (here on the CPU).

One parent run with two workers, one of which is killed with SIGKILL as soon as it starts: the
parent names its shard and fails; the rerun resumes that shard alone, and every id is there once.
"""

import json
import os
import re
import signal
import time

import pandas as pd
import pytest
from conftest import news_rows, start_batch_run, write_job, write_jsonl

pytestmark = pytest.mark.engine

ROWS = 16


def worker_pids(proc, n, timeout=300):
    """Read the parent's stderr until it has announced n workers: {shard label: pid}."""
    pids, lines = {}, []
    deadline = time.time() + timeout
    while len(pids) < n and time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail("the parent ended before starting its workers:\n" + "".join(lines[-40:]))
        lines.append(line)
        if m := re.search(r"shard (\S+) on CPU: worker pid (\d+)", line):
            pids[m.group(1)] = int(m.group(2))
    return pids


def test_dead_worker_is_reported_and_its_shard_resumes(cli, tmp_path):
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))  # the whole input: shards can complete
    job = write_job(tmp_path, sampling={"max_tokens": 8}, output={"batch_size": 4}, input={"path": str(rows)},
                    engine={"max_num_seqs": 4}, executor={"data_parallel": 2})
    out = tmp_path / "out"
    proc = start_batch_run("run", job)
    pids = worker_pids(proc, 2)
    assert sorted(pids) == ["0000-of-0002", "0001-of-0002"]
    os.kill(pids["0001-of-0002"], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 1, stderr[-3000:]
    assert "worker of shard 0001-of-0002 on CPU was killed by SIGKILL" in stderr
    assert "rerun the job to resume it" in stderr
    assert (out / "shards" / "0000-of-0002.done").exists()
    assert not (out / "shards" / "0001-of-0002.done").exists()
    first = json.loads((out / "summary-0000-of-0002.json").read_text())

    status = cli("status", out)
    assert "0001-of-0002  missing" in status.output

    rerun = cli("run", job)
    assert rerun.exit_code == 0, rerun.output
    assert "engines  2" in rerun.output
    # shard 0 was complete: its rerun ran nothing again
    again = json.loads((out / "summary-0000-of-0002.json").read_text())
    assert again["skipped_done"] == first["shard_rows"] and again["this_run"]["requests"] == 0
    assert cli("status", out).exit_code == 0
    df = pd.read_parquet(out / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS))
    assert df["id"].is_unique
    stats = pd.read_parquet(out / "stats")
    assert set(stats["shard"]) == {"0000-of-0002", "0001-of-0002"}


def test_killed_parent_leaves_no_worker(tmp_path):
    """kill -9 of the parent (the OOM killer's way): its workers, in sessions of their own, must go too."""
    from batch_runner.engines.reaper import started_at

    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    job = write_job(tmp_path, sampling={"max_tokens": 8}, input={"path": str(rows)}, executor={"data_parallel": 2})
    proc = start_batch_run("run", job)
    pids = worker_pids(proc, 2)
    time.sleep(3.0)  # the parent's watcher has seen them (it looks every 0.5 s; slower while the workers start)
    started = {pid: started_at(pid) for pid in pids.values()}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(started_at(p) == s for p, s in started.items()):
        time.sleep(0.5)
    assert not [p for p, s in started.items() if started_at(p) == s], "workers outlived the parent"
