"""The Ray executor against a real local Ray cluster, started by the test: its own tier, `pytest -m ray`.

Two shards with the embedded model on the CPU run as Ray tasks. Once one shard has committed a
part, the Ray worker running it is killed with SIGKILL; Ray runs the task again, the new run
resumes from the committed parts, and every id is in the output exactly once.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, news_rows, start_batch_run, write_job, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.engine]

ROWS = 32  # 16 a shard, 8 batches of 24 tokens: a stop after a first part lands mid-run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A one-node Ray cluster of this interpreter's Ray (installed as the optional extra if missing)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "ray>=2.9"], check=True)
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    # the workers import this checkout's package, wherever the .venv was installed from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=4", "--num-gpus=0",
                    "--include-dashboard=false", f"--temp-dir={temp}", "--object-store-memory=100000000",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


def _lock_holder(out: Path, shard: str) -> int | None:
    try:
        text = (out / f".lock-{shard}").read_text()
    except OSError:
        return None
    return int(text.split()[1]) if text.startswith("pid ") else None


def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The run's output once it ends; past the timeout, its process group is killed (none left behind)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def _ray_job(tmp_path: Path, ray_address: str, **executor) -> Path:
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    return write_job(tmp_path, sampling={"max_tokens": 24, "ignore_eos": True}, output={"batch_size": 2},
                     input={"path": str(rows)}, engine={"max_num_seqs": 2},
                     executor={"kind": "ray", "ray_address": ray_address, "shards": 2, **executor})


def _wait_for_parts(out: Path, proc: subprocess.Popen, *shards: str) -> None:
    deadline = time.time() + 600
    while not all(list((out / "results").glob(f"part-{s}-*.parquet")) for s in shards):
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"shards {shards} committed nothing:\n" + proc.communicate()[1][-4000:])
        time.sleep(0.2)


def test_two_shards_on_ray_survive_a_killed_worker(ray_address, tmp_path, cli):
    job = _ray_job(tmp_path, ray_address)
    out = tmp_path / "out"
    proc = start_batch_run("run", job)
    _wait_for_parts(out, proc, "0000-of-0002")
    worker = _lock_holder(out, "0000-of-0002")
    assert worker and worker != proc.pid  # the shard runs in a Ray worker, not in batch-run
    os.kill(worker, signal.SIGKILL)

    _, stderr = _communicate(proc, 900)
    assert proc.returncode == 0, stderr[-4000:]
    assert "2 shards as Ray tasks" in stderr
    df = pd.read_parquet(out / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS))
    assert df["id"].is_unique
    stats = pd.read_parquet(out / "stats")
    assert stats[stats["shard"] == "0000-of-0002"]["run_id"].nunique() >= 2  # killed, then run again
    assert cli("status", out).exit_code == 0
    merged = cli("merge", out)
    assert merged.exit_code == 0, merged.output


def test_a_stopped_driver_stops_its_shards_cleanly_and_ends_75(ray_address, tmp_path, cli):
    """SIGTERM to the driver, repeated as schedulers do: every shard saves its rows and ends 75; the
    driver reports them interrupted with their rows, exits 75, and a rerun finishes every id once."""
    job = _ray_job(tmp_path, ray_address)
    out = tmp_path / "out"
    proc = start_batch_run("run", job)
    _wait_for_parts(out, proc, "0000-of-0002", "0001-of-0002")
    proc.send_signal(signal.SIGTERM)
    time.sleep(2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = _communicate(proc, 300)
    assert proc.returncode == 75, stdout + stderr[-4000:]
    assert "status  interrupted" in stdout and "failed on Ray" not in stderr
    written = sum(pq.read_metadata(p).num_rows for p in (out / "results").glob("part-*.parquet"))
    assert 0 < written < ROWS and f"rows  {written}/{ROWS} written" in stdout
    ends = [json.loads((out / f"summary-{s}.json").read_text())["exit_status"] for s in ("0000-of-0002", "0001-of-0002")]
    assert 75 in ends and set(ends) <= {0, 75}  # each shard saved its rows; one may have finished first

    again = start_batch_run("run", job)
    _, stderr = _communicate(again, 900)
    assert again.returncode == 0, stderr[-4000:]
    df = pd.read_parquet(out / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS)) and df["id"].is_unique


def test_a_shard_lost_more_often_than_max_retries_is_given_up(ray_address, tmp_path):
    """Every retry counts toward executor.max_retries, whatever killed the task (a lost worker here;
    Ray's memory monitor alike, which Ray itself would retry without bound)."""
    job = _ray_job(tmp_path, ray_address, max_retries=0)
    out = tmp_path / "out"
    proc = start_batch_run("run", job)
    _wait_for_parts(out, proc, "0000-of-0002")
    os.kill(_lock_holder(out, "0000-of-0002"), signal.SIGKILL)
    _, stderr = _communicate(proc, 900)
    assert proc.returncode == 1, stderr[-4000:]
    assert "[0000-of-0002] error: its task was lost on each of 1 run(s)" in stderr
    assert "gave up after executor.max_retries=0 retries" in stderr
    assert json.loads((out / "summary-0001-of-0002.json").read_text())["exit_status"] == 0


def test_an_unreachable_cluster_is_one_clear_line(tmp_path):
    pytest.importorskip("ray")
    job = _ray_job(tmp_path, f"127.0.0.1:{_free_port()}")
    proc = start_batch_run("run", job)
    _, stderr = _communicate(proc, 120)
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "executor.ray_address: no Ray cluster answers at 127.0.0.1:" in lines[0], stderr
