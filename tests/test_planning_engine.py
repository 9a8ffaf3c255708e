"""`tune` and `estimate` end to end with the real engine (CPU build, embedded model): the `long`
tier (`pytest -m long`), since every trial starts an engine of its own."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, write_job

pytestmark = [pytest.mark.long, pytest.mark.engine]


def batch_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batch_runner.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_tune_sweeps_trials_in_engines_of_their_own_within_its_budget(tmp_path):
    job = write_job(tmp_path, sampling={"max_tokens": 8})
    out = tmp_path / "tune"
    # a trial takes about 60 s here (its process, engine start, warm-up); a sweep trial runs only with
    # room for itself and both re-runs after it (3 trials' time), so 8 min runs at least two trials at up
    # to 2 min a trial. (The budget's own arithmetic is tested with a fake clock in test_planning.py.)
    proc = batch_run("tune", job, "--rows", 16, "--budget", 8, "--trial-limit", 3, "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "profile: " in proc.stderr and "output tok/s" in proc.stderr
    assert "skipped max_num_seqs" in proc.stderr  # 16 rows cannot judge 128 sequences at once
    table = proc.stdout.splitlines()
    assert table[0].split()[:2] == ["trial", "output"] and table[1].startswith("profile")
    assert "best: " in proc.stdout
    data = json.loads((out / "tune.json").read_text())
    assert data["trials"][0]["name"] == "profile" and data["trials"][0]["requests"] == 16
    first = data["trials"][0]  # the budget reckons with the trial's whole process
    assert first["wall_s"] > first["start_s"] + first["generation_s"]
    # three passes on the trial's one engine, each into a folder of its own; the median pass stands for it
    assert len(first["passes"]) == 3 and first["output_tok_s"] == sorted(first["passes"])[1]
    assert all((out / name / "summary.json").exists() for name in ("profile", "profile.pass-1", "profile.pass-2"))
    assert len(data["trials"]) >= 2  # each in an engine of its own, one after the other
    assert (out / "profile.log").read_text()  # vLLM's start-up went to the trial's log


def test_estimate_counts_the_whole_input_and_sizes_an_array(tmp_path):
    job = write_job(tmp_path, sampling={"max_tokens": 8})
    proc = batch_run("estimate", job, "--rows", 16, "--price", 2.5, "--array", 3, "--time", "00:20:00")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "input: 240 rows" in text and "trial: 16 rows" in text
    assert "cost at 2.5 per engine-hour" in text
    assert "Slurm: 3 tasks" in text and "fits" in text and "sbatch --array=0-2 --time=" in text
    assert "note: the trial's 16 rows are fewer than twice max_num_seqs" in text  # one wave: leans high
