"""The Quick start job on this CPU under several settings, interleaved (A, B, A, B...).

For each run: seconds from the run's start to the engine ready (first request submitted), from the
engine ready to the first committed batch, and the generation throughput (output tokens over the
generation time, summary.json's definition). Every run is reported, not the best.

    python bench/experiments/cpu_wave.py OUT.json [--seqs 512,64] [--rounds 2]
    python bench/experiments/cpu_wave.py OUT.json --variant stats=engine.extra.disable_log_stats=false \
        --variant nostats=engine.extra.disable_log_stats=true
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

ROOT = Path(__file__).resolve().parents[2]


def one_run(label: str, sets: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "batch_runner.cli", "run", "jobs/summarize.yaml", "--output", str(out),
           *[a for s in sets for a in ("--set", s)]]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"variant": label, "failed": proc.returncode, "stderr": proc.stderr[-2000:]}
    stats = pd.read_parquet(out / "stats")
    run = json.loads((out / "summary.json").read_text())["this_run"]
    ready = stats["submitted_at"].min().timestamp()
    commits = sorted(stats["finished_at"].map(lambda t: t.timestamp()))
    return {"variant": label, "sets": sets, "engine_start_s": round(ready - t0, 1),
            "first_commit_after_ready_s": round(commits[0] - ready, 1),
            "commits_after_ready_s": [round(c - ready, 1) for c in commits],
            "generation_s": run["generation_s"], "output_tokens": run["output_tokens"],
            "output_tok_s": run["output_tok_s"], "process_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seqs", default="512,64", help="max_num_seqs variants (when no --variant is given)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=SECTION.KEY=VALUE[;...]")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    variants = [(v.split("=", 1)[0], v.split("=", 1)[1].split(";")) for v in args.variant] or \
        [(f"seqs{n}", [f"engine.max_num_seqs={n}"]) for n in args.seqs.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (label, sets) in enumerate(variants):
                res = one_run(label, sets, Path(tmp) / f"r{r}-v{i}")
                res["round"] = r
                results.append(res)
                print(json.dumps(res), flush=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n{'round':>5} {'variant':>10} {'start s':>8} {'1st commit s':>12} {'gen s':>7} {'out tok/s':>9}")
    for r in results:
        if "failed" not in r:
            print(f"{r['round']:>5} {r['variant']:>10} {r['engine_start_s']:>8} {r['first_commit_after_ready_s']:>12}"
                  f" {r['generation_s']:>7} {r['output_tok_s']:>9}")


if __name__ == "__main__":
    main()
