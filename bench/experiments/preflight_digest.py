"""The pre-flight's cost before and after a change, on a generated 1,000,000-row JSONL input.

    python bench/experiments/preflight_digest.py --before TREE --after TREE [--rows 1000000] [--pairs 2] [--dir /tmp/x]

TREE is a source tree of batch-runner (e.g. from ``git archive COMMIT | tar -x -C TREE``). Each run is
``python -m batch_runner.cli run JOB --dry-run`` with that tree first on sys.path, timed as a whole
process (wall and CPU seconds); runs alternate before, after, before, after... so that both see the
same machine load.
The input (the sample news rows repeated with unique ids) is written once under --dir.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def make_input(path: Path, rows: int) -> None:
    if path.exists():
        return
    news = [json.loads(line) for line in (ROOT / "inputs" / "news.jsonl").read_text().splitlines()]
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({**news[i % len(news)], "id": f"row-{i:07d}"}) + "\n")


def make_job(folder: Path, data: Path) -> Path:
    job = yaml.safe_load((ROOT / "jobs" / "summarize.yaml").read_text())
    job["input"]["path"] = str(data)
    job["output"]["dir"] = str(folder / "out")
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def timed_run(tree: Path, job: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one dry run."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batch_runner.cli", "run", str(job), "--dry-run"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/batch-run-preflight-bench"))
    a = ap.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    data = a.dir / f"rows-{a.rows}.jsonl"
    make_input(data, a.rows)
    job = make_job(a.dir, data)
    runs = []
    for i in range(a.pairs):
        for label, tree in (("before", a.before), ("after", a.after)):
            wall, cpu = timed_run(tree, job)
            runs.append({"pair": i, "tree": label, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)})
            print(json.dumps(runs[-1]), flush=True)
    total = lambda tree, m: sum(r[m] for r in runs if r["tree"] == tree)  # noqa: E731
    ratio = {m: round(total("after", m) / total("before", m), 3) for m in ("seconds", "cpu_seconds")}
    print(json.dumps({"rows": a.rows, "input_bytes": data.stat().st_size, "runs": runs, "after_over_before": ratio}))


if __name__ == "__main__":
    main()
