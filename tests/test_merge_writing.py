"""How `merge` writes: compacted row groups, no temporary file left by a merge cut short, one merge at
a time. The output comes from real runs with the fake engine (engine.backend: fake)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, write_job, write_jsonl

ROWS = 2_000


@pytest.fixture(scope="module")
def one_row_parts(tmp_path_factory):
    """A complete output of 2,000 one-row parts (output.batch_size 1), made once; each test copies it."""
    from click.testing import CliRunner

    from batch_runner.cli import main

    folder = tmp_path_factory.mktemp("one_row_parts")
    rows = write_jsonl(folder / "in.jsonl", [{"id": f"r{i:04d}", "title": f"t{i}", "topic": "x", "text": "short"}
                                              for i in range(ROWS)])
    job = write_job(folder, input={"path": str(rows)}, output={"batch_size": 1},
                    engine={"backend": "fake", "extra": {"per_poll": 50}})
    result = CliRunner().invoke(main, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list((folder / "out" / "results").glob("part-*.parquet"))) == ROWS
    return folder / "out"


@pytest.fixture
def out(one_row_parts, tmp_path):
    shutil.copytree(one_row_parts, tmp_path / "out")
    return tmp_path / "out"


def test_merge_compacts_one_row_parts_into_few_row_groups(cli, out):
    merged = cli("merge", out)
    assert merged.exit_code == 0, merged.output
    meta = pq.read_metadata(out / "merged" / "results.parquet")
    assert meta.num_rows == ROWS and meta.num_row_groups == 1
    assert pq.read_metadata(out / "merged" / "stats.parquet").num_row_groups == 1
    df = pd.read_parquet(out / "merged" / "results.parquet")
    assert sorted(df["id"]) == [f"r{i:04d}" for i in range(ROWS)] and df["id"].is_unique


def test_row_groups_are_bounded_in_rows_and_bytes(out, monkeypatch):
    """Memory holds one row group: the bounds cut the stream, whichever comes first."""
    import batch_runner.output.status as shards

    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", 300)
    shards.merge(out)
    groups = pq.read_metadata(out / "merged" / "results.parquet")
    assert groups.num_row_groups == 7 and groups.row_group(0).num_rows == 300  # 6 x 300 + 200
    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", 100_000)
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 20_000)
    shards.merge(out)
    groups = pq.read_metadata(out / "merged" / "results.parquet")
    assert 2 < groups.num_row_groups < ROWS / 10 and groups.num_rows == ROWS


def test_a_stale_temporary_file_of_an_earlier_merge_is_removed(cli, out):
    (out / "merged").mkdir()
    stale = [out / "merged" / ".results.parquet.x1y2z3.tmp", out / "merged" / ".stats.parquet.a1b2c3.tmp"]
    for f in stale:
        f.write_bytes(b"PAR1 cut short")
    mine = out / "merged" / ".notes.tmp"  # not a name merge writes: left alone
    mine.write_text("keep")
    assert cli("merge", out).exit_code == 0
    assert not any(f.exists() for f in stale) and mine.exists()


def test_a_second_merge_while_one_runs_is_refused_and_removes_nothing(cli, out):
    from batch_runner.output.status import merge_lock

    theirs = out / "merged" / ".results.parquet.abcdef.tmp"
    with merge_lock(out):  # a merge running: it holds the lock and writes its temporary file
        theirs.write_bytes(b"being written")
        refused = cli("merge", out)
    assert refused.exit_code == 2 and "another merge of this output is running" in refused.output
    assert theirs.exists()


# merge in a process of its own whose first row-group write waits, so that a signal finds it writing
SLOW_MERGE = """
import sys, time
import pyarrow.parquet as pq
write = pq.ParquetWriter.write_table
def slow(self, *args, **kw):
    time.sleep(60)
    return write(self, *args, **kw)
pq.ParquetWriter.write_table = slow
from batch_runner.cli import entry
sys.argv = ["batch-run", "merge", sys.argv[1]]
entry()
"""


@pytest.mark.parametrize("signals, status", [([signal.SIGTERM], 75), ([signal.SIGINT], 75),
                                             ([signal.SIGTERM, signal.SIGTERM], 75)],
                         ids=["sigterm", "sigint", "sigterm-repeated"])
def test_a_merge_stopped_by_a_signal_leaves_no_temporary_file(out, signals, status):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 60
        while not list((out / "merged").glob(".results.parquet.*.tmp")) if (out / "merged").is_dir() else True:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        for sig in signals:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == status, stderr[-2000:]
    assert f"{signals[0].name} received: merge stopped" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in (out / "merged").iterdir()) == [".lock-merge"]  # no temporary, no result
