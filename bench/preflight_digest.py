"""The pre-flight's cost before and after a change, on a generated 1,000,000-row JSONL input.

    python bench/preflight_digest.py --before TREE --after TREE [--rows 1000000] [--pairs 2] [--dir /tmp/x]

TREE is a source tree of batch-runner (e.g. from ``git archive COMMIT | tar -x -C TREE``). Each run is
``python -m batch_runner.cli run JOB --dry-run`` with that tree first on sys.path, timed as a whole
process; runs alternate before, after, before, after... so that both see the same machine load.
The input (the sample news rows repeated with unique ids) is written once under --dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


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


def timed_run(tree: Path, job: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "batch_runner.cli", "run", str(job), "--dry-run"], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


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
            runs.append({"pair": i, "tree": label, "seconds": round(timed_run(tree, job), 2)})
            print(json.dumps(runs[-1]), flush=True)
    mean = {k: sum(r["seconds"] for r in runs if r["tree"] == k) / a.pairs for k in ("before", "after")}
    print(json.dumps({"rows": a.rows, "input_bytes": data.stat().st_size, "runs": runs,
                      "after_over_before": round(mean["after"] / mean["before"], 3)}))


if __name__ == "__main__":
    main()
