"""Prefix-affinity sharding against the id hash: W2 as N shards run one after another on one GPU.

    python bench/experiments/affinity.py --out DIR [--model $GPU_MODELS/mistral-7b-shape] [--shards 4] [--budget 520]

W2: 400 distinct 2000-token prefixes x 10 rows, shuffled. Each variant runs the N shards of the job
one after another, as N tasks of an array would on one GPU; the prefix cache is emptied between
shards (a task of its own starts with an empty cache). Variants alternate (hash, affinity, hash,
affinity, ...) while the time budget lasts, in one child process that keeps one engine (the
parent kills its process group when the budget is spent). Per shard: prompt tokens, cached prompt
tokens, generation time; per variant: prompt tokens actually computed (prompt minus cached) and
the summed generation time. Results land in DIR/affinity.json after every shard.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE_W2 = dict(rows=48, prefixes=8, prefix_tokens=300, doc_tokens=(20, 20), max_tokens=8)
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def child(args) -> None:
    from transformers import AutoTokenizer

    from batch_runner.config import load_job
    from batch_runner.engines import reset_prefix_caches, shutdown_engines
    from batch_runner.inputs.assignment import Shard
    from batch_runner.runner.shard import RunOptions, run_shard
    from bench import WORKLOADS, build_workload, write_job

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # the embedded model on the CPU, a small W2
        from batch_runner.engines.models import resolve_model

        args.model = resolve_model("smollm2-135m-instruct")
    spec = SMOKE_W2 if args.smoke else WORKLOADS["w2"]
    tok = AutoTokenizer.from_pretrained(args.model)
    info = build_workload("w2", spec, tok, work)
    job_file = write_job("w2", spec, args.model, work, smoke=args.smoke)
    record = {"workload": info, "model": args.model, "shards": args.shards, "runs": []}
    deadline = time.time() + args.budget
    for rep in range(args.repeats):
        for variant in ("hash", "affinity"):
            if time.time() > deadline - args.reserve_s:
                break
            sets = [f"prompt.prefix_affinity={'true' if variant == 'affinity' else 'false'}",
                    f"output.dir={work}/out-{variant}-{rep}"]
            job = load_job(job_file, sets)
            run = {"variant": variant, "repeat": rep, "shards": []}
            record["runs"].append(run)
            for i in range(args.shards):
                reset_prefix_caches()  # a task of its own would start with an empty cache
                t0 = time.perf_counter()
                result = run_shard(job, RunOptions(shard=Shard(i, args.shards), progress=False))
                s = result.summary.this_run
                run["shards"].append({"shard": i, "status": int(result.status), "wall_s": time.perf_counter() - t0,
                                      **{k: s[k] for k in ("requests", "prompt_tokens", "cached_prompt_tokens",
                                                           "output_tokens", "generation_s")}})
                (out / "affinity.json").write_text(json.dumps(record, indent=1))
    shutdown_engines()


def summarize(path: Path) -> str:
    record = json.loads(path.read_text())
    lines = ["| variant | repeat | shards done | requests | prompt tokens | cached | computed | generation s (sum) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in record["runs"]:
        sh = run["shards"]
        p, c = sum(x["prompt_tokens"] for x in sh), sum(x["cached_prompt_tokens"] for x in sh)
        lines.append(f"| {run['variant']} | {run['repeat']} | {len(sh)}/{record['shards']} | "
                     f"{sum(x['requests'] for x in sh):,} | {p:,} | {c:,} | {p - c:,} | "
                     f"{sum(x['generation_s'] for x in sh):.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(os.environ.get("GPU_MODELS", "."), "mistral-7b-shape"))
    ap.add_argument("--out", default="affinity-out")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget", type=float, default=520, help="seconds for the whole child")
    ap.add_argument("--reserve-s", type=float, default=150, help="do not start a variant with less time left")
    ap.add_argument("--smoke", action="store_true", help="the embedded model on the CPU, a small W2")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=args.budget + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine's processes with it: the GPU is free again
        proc.wait()
        code = "timeout"
    if (out / "affinity.json").exists():
        table = summarize(out / "affinity.json")
        (out / "affinity.md").write_text(table + "\n")
        print(table, flush=True)
    print(f"child exit: {code}", flush=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
