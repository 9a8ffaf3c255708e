"""The project's sbatch script under the signals Slurm sends it, with stand-ins for batch-run and scontrol.

Slurm delivers a stop as SIGTERM to the batch script, and may deliver it more than once (scancel
retries while slurmctld is busy: "Job can not be altered now, try again later"). Whatever reaches
the script, it must end with batch-run's own status and requeue on 75. The same stop on a real
Slurm is in test_slurm.py (`pytest -m slurm`).
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT

SBATCH = ROOT / "jobs" / "slurm" / "batch-run.sbatch"

# batch-run's part: on the first TERM it saves for a while, then exits with $STATUS; meanwhile the
# scheduler's repeats reach the script, the last one just as batch-run ends ($TARGET: the script, or
# its process group).
STAND_IN = """#!/usr/bin/env bash
trap 'echo TERM >> "$WORK/terms"; stopping=1' TERM
touch "$WORK/ready"
while [ -z "${stopping:-}" ]; do sleep 0.05; done
sleep 1
kill -TERM "$TARGET"
exit "$STATUS"
"""

SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$WORK/scontrol"
exit "${SCONTROL_STATUS:-0}"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _run_script(tmp_path: Path, status: int, terms: int, group: bool = False,
                **env) -> tuple[subprocess.CompletedProcess, Path]:
    """The sbatch script as Slurm runs it, sent `terms` SIGTERMs 0.3 s apart once batch-run runs: to
    the script alone (`--signal=B:TERM`), or with `group` to its whole process group, as slurmstepd
    22.05 delivers `scancel --batch`."""
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "scontrol", SCONTROL)
    stand_in = _executable(tmp_path / "batch-run", STAND_IN)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WORK": str(work), "STATUS": str(status),
           "BATCH_RUN": str(stand_in), "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "101",
           "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "1", **env}
    target = 'TARGET=-$$' if group else 'TARGET=$$'
    proc = subprocess.Popen(["bash", "-c", target + ' exec bash "$0" job.yaml', str(SBATCH)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not (work / "ready").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        for _ in range(terms):
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), work


@pytest.mark.parametrize("group", [False, True], ids=["script", "process-group"])
@pytest.mark.parametrize("terms", [1, 3])
def test_a_stop_requeues_however_often_the_signal_comes(tmp_path, terms, group):
    done, work = _run_script(tmp_path, 75, terms, group)
    assert (work / "scontrol").read_text().split() == ["requeue", "100_1"], done.stderr
    assert done.returncode == 0, done.stderr
    assert "requeueing 100_1" in done.stderr
    assert (work / "terms").read_text().startswith("TERM")  # passed on (repeats may coalesce in the child)


def test_the_script_ends_with_batch_runs_own_status(tmp_path):
    """No requeue unless batch-run said 75; the script's status is batch-run's, not the signal's."""
    done, work = _run_script(tmp_path, 3, 2, group=True)
    assert done.returncode == 3, done.stderr
    assert not (work / "scontrol").exists()


def test_a_failed_requeue_or_none_left_ends_75(tmp_path):
    done, work = _run_script(tmp_path, 75, 2, SCONTROL_STATUS="1")
    assert done.returncode == 75 and "scontrol requeue failed" in done.stderr
    off = tmp_path / "off"
    off.mkdir()
    done, work = _run_script(off, 75, 2, BATCH_RUN_MAX_REQUEUES="0")
    assert done.returncode == 75 and not (work / "scontrol").exists()
