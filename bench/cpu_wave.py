"""The Quick start job on this CPU with several max_num_seqs, interleaved (A, B, A, B...).

For each run: seconds from the run's start to the engine ready (first request submitted), from the
engine ready to the first committed batch, and the generation throughput (output tokens over the
generation time, summary.json's definition). Every run is reported, not the best.

    python bench/cpu_wave.py OUT.json [--seqs 512,64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def one_run(seqs: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "batch_runner.cli", "run", "jobs/summarize.yaml", "--output", str(out),
           "--set", f"engine.max_num_seqs={seqs}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"max_num_seqs": seqs, "failed": proc.returncode, "stderr": proc.stderr[-2000:]}
    stats = pd.read_parquet(out / "stats")
    run = json.loads((out / "summary.json").read_text())["this_run"]
    ready = stats["submitted_at"].min().timestamp()
    commits = sorted(stats["finished_at"].map(lambda t: t.timestamp()))
    return {"max_num_seqs": seqs, "engine_start_s": round(ready - t0, 1),
            "first_commit_after_ready_s": round(commits[0] - ready, 1),
            "commits_after_ready_s": [round(c - ready, 1) for c in commits],
            "generation_s": run["generation_s"], "output_tokens": run["output_tokens"],
            "output_tok_s": run["output_tok_s"], "process_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seqs", default="512,64")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for seqs in map(int, args.seqs.split(",")):
                res = one_run(seqs, Path(tmp) / f"r{r}-s{seqs}")
                res["round"] = r
                results.append(res)
                print(json.dumps(res), flush=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n{'round':>5} {'seqs':>5} {'start s':>8} {'1st commit s':>12} {'gen s':>7} {'out tok/s':>9}")
    for r in results:
        if "failed" not in r:
            print(f"{r['round']:>5} {r['max_num_seqs']:>5} {r['engine_start_s']:>8} {r['first_commit_after_ready_s']:>12}"
                  f" {r['generation_s']:>7} {r['output_tok_s']:>9}")


if __name__ == "__main__":
    main()
