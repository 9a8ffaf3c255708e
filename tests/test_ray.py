"""The Ray executor against a real local Ray cluster, started by the test: its own tier, `pytest -m ray`.

Two shards with the embedded model on the CPU run as Ray tasks. Once one shard has committed a
part, the Ray worker running it is killed with SIGKILL; Ray runs the task again, the new run
resumes from the committed parts, and every id is in the output exactly once.
"""

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
import pytest

from conftest import news_rows, start_batch_run, write_job, write_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.engine]

ROWS = 24


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
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=4", "--num-gpus=0",
                    "--include-dashboard=false", f"--temp-dir={temp}", "--object-store-memory=100000000",
                    "--disable-usage-stats"], check=True, capture_output=True)
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


def test_two_shards_on_ray_survive_a_killed_worker(ray_address, tmp_path, cli):
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    job = write_job(tmp_path, sampling={"max_tokens": 24}, output={"batch_size": 2}, input={"path": str(rows)},
                    engine={"max_num_seqs": 2},
                    executor={"kind": "ray", "ray_address": ray_address, "shards": 2})
    out = tmp_path / "out"
    proc = start_batch_run("run", job)
    deadline = time.time() + 600
    while not list((out / "results").glob("part-0000-of-0002-*.parquet")):
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail("shard 0 committed nothing:\n" + proc.communicate()[1][-4000:])
        time.sleep(0.2)
    worker = _lock_holder(out, "0000-of-0002")
    assert worker and worker != proc.pid  # the shard runs in a Ray worker, not in batch-run
    os.kill(worker, signal.SIGKILL)

    _, stderr = proc.communicate(timeout=900)
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
