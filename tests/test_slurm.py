"""A real Slurm on this machine: the project's own sbatch script, arrays, a stop that comes back by
itself, and a resubmit of exactly what `batch-run status` prints.

Starts a single-node Slurm (Debian's slurm-wlm and munge, installed here where the test runs as
root with apt) with its daemons as this test's children, and stops them by their process ids at
the end. Skipped, with the reason, where that cannot be done. Run this tier with
`.venv/bin/python -m pytest -m slurm` (the default run leaves it out: it takes a few minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, news_rows, write_job, write_jsonl

pytestmark = [pytest.mark.slurm, pytest.mark.engine]

SBATCH = ROOT / "jobs" / "slurm" / "batch-run.sbatch"
# Enough rows, each long enough (24 tokens, ignore_eos) that a shard runs for tens of seconds on a
# fast CPU: the test stops shard 1 after its first part, and must reach it before its last row.
ROWS = 48


def _install() -> str | None:
    """Install slurm-wlm and munge where we may; the reason when they are not to be had."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Slurm is not installed and this is not root with apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        subprocess.run(cmd, capture_output=True, env=env, timeout=900)
        if shutil.which("slurmctld") and shutil.which("munged"):
            return None
    return "apt-get could not install slurm-wlm and munge"


def _conf(folder: Path, cpus: int, memory_mb: int) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=batchrun
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=10
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm: yields the environment for its commands."""
    reason = _install()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    conf = _conf(folder, os.cpu_count() or 2, memory_mb)
    # this checkout's package, wherever the .venv's batch-run was installed from (sbatch passes it on)
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    munge = folder / "munge"
    munge.mkdir()
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    daemons = [subprocess.Popen(["munged", "-F", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
                                 f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                                 f"--seed-file={munge}/munged.seed"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)]
    time.sleep(1)
    env["MUNGE_SOCKET"] = f"{munge}/munge.socket"  # read by Slurm's auth/munge through libmunge
    conf.write_text(conf.read_text() + f"AuthInfo=socket={munge}/munge.socket\n")
    daemons.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    daemons.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        _wait_for(lambda: "idle" in _out(["sinfo", "-h", "-o", "%T"], env), 60,
                  lambda: (folder / "log" / "slurmctld.log").read_text()[-2000:]
                  + (folder / "log" / "slurmd.log").read_text()[-2000:] if (folder / "log" / "slurmd.log").exists()
                  else "no slurmd log")
        yield env
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
        for d in reversed(daemons):
            d.send_signal(signal.SIGTERM)
        for d in daemons:
            try:
                d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()


def _out(cmd: list[str], env: dict) -> str:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).stdout


def _wait_for(check, timeout: float, why=lambda: "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(f"timed out waiting; {why()}")


def _sbatch(env: dict, folder: Path, array: str, job: Path, *extra: str) -> str:
    """Submit the project's script from folder (not the repository); returns the array job id."""
    out = subprocess.run(["sbatch", "--parsable", f"--array={array}", "--cpus-per-task=1", *extra, str(SBATCH),
                          str(job)], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _finished(env: dict, job_id: str) -> bool:
    return _out(["squeue", "-h", "-j", job_id], env).strip() == ""


def _states(env: dict, job_id: str) -> str:
    return _out(["scontrol", "show", "job", job_id], env)


def _job(tmp_path: Path) -> Path:
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    return write_job(tmp_path, sampling={"max_tokens": 24, "ignore_eos": True}, output={"batch_size": 2},
                     input={"path": str(rows)}, engine={"max_num_seqs": 2})


def _status(env: dict, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "batch-run"), "status", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)


def _exactly_once(env: dict, out: Path) -> None:
    merged = subprocess.run([str(ROOT / ".venv" / "bin" / "batch-run"), "merge", str(out)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    df = pd.read_parquet(out / "merged" / "results.parquet")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(ROWS)) and df["id"].is_unique


def test_stopped_task_comes_back_and_a_printed_resubmit_works(slurm, tmp_path):
    """Three shards; shard 1 is stopped mid-run, its SIGTERM repeated as a retrying scancel does,
    and requeues itself; shard 2 is never submitted with the others, and status's printed --array
    runs exactly it."""
    job, out = _job(tmp_path), tmp_path / "out"
    submit = tmp_path / "submit"  # not the repository: the script must find batch-run by itself
    submit.mkdir()
    first = _sbatch(slurm, submit, "0-2%2", job, "--hold")  # shard count 3, fixed by this first array
    subprocess.run(["scontrol", "release", f"{first}_0", f"{first}_1"], env=slurm, check=True, timeout=60)
    # shard 1: once it has committed a part, stop it the way a time limit does
    _wait_for(lambda: list((out / "results").glob("part-0001-of-0003-*")) if (out / "results").exists() else False,
              600, lambda: _states(slurm, first))
    subprocess.run(["scancel", "--batch", "--signal=TERM", f"{first}_1"], env=slurm, check=True, timeout=60)
    time.sleep(3)  # scancel's retry ("Job can not be altered now") comes seconds later; the task may be gone
    subprocess.run(["scancel", "--batch", "--signal=TERM", f"{first}_1"], env=slurm, timeout=60)
    subprocess.run(["scancel", f"{first}_2"], env=slurm, check=True, timeout=60)  # never ran
    _wait_for(lambda: _finished(slurm, first), 900, lambda: _states(slurm, first))
    log = (submit / f"batch-run-{first}_1.log").read_text()
    assert "requeueing" in log and '"event": "start"' in log, log[-3000:]
    summary = json.loads((out / "summary-0001-of-0003.json").read_text())
    assert summary["status"] == "ok" and summary["skipped_done"] > 0  # it came back and resumed

    status = _status(slurm, out)
    assert status.returncode == 1 and "0002-of-0003  missing" in status.stdout
    printed = next(line for line in status.stdout.splitlines() if line.startswith("resubmit: "))
    assert printed == "resubmit: --array=2"
    again = _sbatch(slurm, submit, printed.removeprefix("resubmit: --array="), job)
    _wait_for(lambda: _finished(slurm, again), 600, lambda: _states(slurm, again))
    assert _status(slurm, out).returncode == 0
    _exactly_once(slurm, out)
