"""A file that cannot be written (full disk, read-only file system, a path under a file) is a message
naming the path, the cause and what to do, with the README's exit status; never a traceback. A disk
that fills mid-run loses no committed row and leaves no partial file, and the rerun resumes.

The tests run as root, whom permissions do not stop: a full disk is simulated where the output's
files are written (``atomic.atomic_write``: the write fails half-way, as pyarrow's does on ENOSPC),
and an unwritable cache is a folder under a regular file (ENOTDIR), which stops root too.
"""

import errno
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT, SUMMARIZE, fake_job, news_rows, write_job, write_jsonl

import batch_runner
from batch_runner import atomic
from batch_runner.errors import StorageError

ROWS = 24


@pytest.fixture
def job(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    return write_job(tmp_path, input={"path": str(data)}, output={"batch_size": 4})


def disk_full_when(monkeypatch, fills) -> list[str]:
    """Make output writes fail with ENOSPC from the first file for which ``fills(path)`` is true on
    (the disk stays full). Each failing write leaves half a temporary file first, as a real one does.
    Returns the paths whose write failed."""
    real, failed = atomic.atomic_write, []

    def atomic_write(path, write):
        if failed or fills(path):
            failed.append(str(path))

            def half(tmp):
                with open(tmp, "wb") as f:
                    f.write(b"PAR1 and then the disk was full")
                raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
            return real(path, half)
        return real(path, write)
    monkeypatch.setattr(atomic, "atomic_write", atomic_write)
    return failed


def third_results_part():
    seen = []

    def fills(path):
        if path.parent.name == "results":
            seen.append(path)
        return len(seen) >= 3
    return fills


WHERE = {  # the file whose write finds the disk full -> what the message names
    "job.json": (lambda: lambda path: path.name == "job.json", "job.json"),
    "a results part mid-run": (third_results_part, "results/part-"),
    "a stats part": (lambda: lambda path: path.parent.name == "stats", "stats/part-"),
    "the summary": (lambda: lambda path: path.name == "summary.json", "summary.json"),
}


@pytest.mark.parametrize("where", sorted(WHERE))
def test_a_full_disk_is_a_message_loses_no_committed_row_and_the_rerun_resumes(cli, fake, tmp_path, job,
                                                                               monkeypatch, where):
    fills, named = WHERE[where]
    out = tmp_path / "out"
    failed = disk_full_when(monkeypatch, fills())
    fake(per_poll=2)
    result = cli("run", job)
    assert failed, "the disk never filled"
    assert result.exit_code == 1, result.output
    message = result.output
    assert "Traceback" not in message and "engine" not in message  # not blamed on the engine
    assert f"cannot write {out}/" in message and named in message and "No space left on device" in message
    assert "rerun the same command to resume" in message
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and not p.name.startswith(".lock-")]
    committed = pd.read_parquet(out / "results") if list((out / "results").glob("part-*")) else pd.DataFrame()
    if where == "a results part mid-run":
        assert 0 < len(committed) < ROWS  # the parts before the disk filled are there, whole
    assert committed.empty or committed["id"].is_unique

    monkeypatch.undo()  # space was freed
    again = fake()
    rerun = cli("run", job)
    assert rerun.exit_code == 0, rerun.output
    assert len(again.submitted) == ROWS - len(committed)  # only the rows without a result ran
    df = pd.read_parquet(out / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS)) and df["id"].is_unique


def _no_room_for_the_lock(monkeypatch, step):
    """ENOSPC where the lock is taken: creating its file, or writing the holder's note into it."""
    real_open, real_write = os.open, os.write

    def open_(path, flags, *args, **kw):
        if step == "create" and ".lock-" in str(path) and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args, **kw)

    def write(fd, data):
        if step == "note" and bytes(data).startswith(b"pid "):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("step", ["create", "note"])
def test_an_output_whose_lock_cannot_be_written_is_exit_2_and_nothing_is_written(cli, fake, tmp_path, job,
                                                                                monkeypatch, step):
    _no_room_for_the_lock(monkeypatch, step)
    engine = fake()
    result = cli("run", job)
    assert result.exit_code == 2, result.output
    lock = tmp_path / "out" / ".lock-0000-of-0001"
    assert f"cannot write {lock}: No space left on device" in result.output
    assert "--output" in result.output and "Traceback" not in result.output
    assert engine.submitted == [] and not (tmp_path / "out").exists()  # as found: "nothing was written"


def unwritable_cache(tmp_path, monkeypatch):
    """A cache folder that even root cannot create: its parent is a regular file."""
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"
    monkeypatch.setenv("BATCH_RUNNER_CACHE", str(cache))
    return cache


def test_an_unwritable_model_cache_names_it_and_the_setting_that_moves_it(cli, fake, tmp_path, job, monkeypatch):
    cache = unwritable_cache(tmp_path, monkeypatch)
    engine = fake()
    result = cli("run", job)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"batch-run: error: cannot write {cache}") and "Not a directory" in line
    assert "BATCH_RUNNER_CACHE" in line and "Traceback" not in result.output
    assert engine.submitted == [] and not (tmp_path / "out").exists()


def test_the_api_staging_a_frame_in_an_unwritable_cache_raises_a_storage_error(fake, tmp_path, monkeypatch):
    cache = unwritable_cache(tmp_path, monkeypatch)
    fake()
    with pytest.raises(StorageError, match="BATCH_RUNNER_CACHE") as caught:
        batch_runner.run(SUMMARIZE, pd.DataFrame(news_rows(3)), output_dir=tmp_path / "out", progress=False)
    assert caught.value.exit_status == 2 and caught.value.path.startswith(str(cache))
    assert not (tmp_path / "out").exists()


def test_a_metrics_file_that_cannot_be_written_is_a_warning_and_the_run_goes_on(cli, fake, tmp_path, job):
    (tmp_path / "a-file").write_text("")
    fake()
    result = cli("run", job, "--metrics-dir", tmp_path / "a-file" / "metrics")
    assert result.exit_code == 0, result.output
    assert result.output.count("cannot write the metrics file") == 1  # said once, not every interval
    assert len(pd.read_parquet(tmp_path / "out" / "results")) == ROWS


def test_a_report_that_cannot_be_written_is_a_message(cli, fake, tmp_path, job):
    fake()
    assert cli("run", job).exit_code == 0
    (tmp_path / "a-file").write_text("")
    result = cli("report", tmp_path / "out", "--to", tmp_path / "a-file" / "report")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{tmp_path / 'a-file'}" in result.output and "Not a directory" in result.output


def _can_mount_tmpfs(where) -> bool:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=64k",
                            "tmpfs", str(where)], capture_output=True, timeout=30) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_a_real_full_disk_mid_run_keeps_every_committed_row_and_the_rerun_resumes(tmp_path):
    """A real full file system: a 64 KiB tmpfs (16 pages; the run's files need more) mounted in a mount
    namespace of the test's own, so nothing outside sees it. Root only (CI); skipped where not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root and unshare)")
    data = write_jsonl(tmp_path / "in.jsonl", news_rows(40))
    job = write_job(tmp_path, input={"path": str(data)}, output={"batch_size": 4, "dir": str(disk / "out")})
    run = f"{sys.executable} -m batch_runner.cli run {fake_job(job, per_poll=2)}"
    script = f"""
        mount -t tmpfs -o size=64k tmpfs {disk} || exit 99
        {run} > {tmp_path}/first.log 2>&1; echo $? > {tmp_path}/first.rc
        cp -a {disk}/out {tmp_path}/after-first
        mount -o remount,size=16m {disk}                     # space was freed
        {run} > {tmp_path}/second.log 2>&1; echo $? > {tmp_path}/second.rc
        cp -a {disk}/out {tmp_path}/after-second
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "first.log").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first
    assert "No space left on device" in first and f"cannot write {disk / 'out'}/" in first
    assert "Traceback" not in first and "rerun the same command to resume" in first
    after = tmp_path / "after-first"
    assert not [p for p in after.rglob("*") if p.name.startswith(".") and not p.name.startswith(".lock-")]
    kept = pd.read_parquet(after / "results")  # every committed part reads: none is cut short
    assert 0 < len(kept) < 40 and kept["id"].is_unique

    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.log").read_text()
    df = pd.read_parquet(tmp_path / "after-second" / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(40)) and df["id"].is_unique
    assert set(kept["id"]) <= set(df["id"])


def test_the_data_parallel_parent_writing_job_json_on_a_full_disk_raises_a_storage_error(tmp_path, job,
                                                                                        monkeypatch):
    from batch_runner.config import load_job
    from batch_runner.executors.base import prepare_shards
    from batch_runner.inputs.assignment import Shard
    from batch_runner.runner.shard import RunOptions

    disk_full_when(monkeypatch, lambda path: path.name == "job.json")
    with pytest.raises(StorageError) as caught:
        prepare_shards(load_job(job), RunOptions(), [Shard(0, 2), Shard(1, 2)])
    assert caught.value.path == str(tmp_path / "out" / "job.json") and caught.value.exit_status == 1
    assert "No space left on device" in str(caught.value) and not list((tmp_path / "out").iterdir())
