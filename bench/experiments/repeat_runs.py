"""How much do runs of one setting vary, within one engine and between two settings?

    python bench/experiments/repeat_runs.py --model MODEL_DIR --out DIR [--rows 2000] [--repeats 4]
                                [--settings "profile;engine.max_num_seqs=2048,..."] [--limit-s 185]

For each ';'-separated group of --set settings (``profile``: the job as it is), one process builds
W1's job on its first --rows rows as ``tune``'s trial does (``trials.trial_job``), warms its engine
up as the trial does, then runs the same rows --repeats times on that one engine, emptying its prefix
cache before each. Each run's output tok/s lands in DIR/repeat_runs.jsonl as it finishes. A process
past --limit-s is killed with its engine. ``tune`` compares settings across processes; this says how
much of a trial's spread is there within one engine already.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def parse_settings(group: str) -> dict:
    import yaml

    if group.strip() == "profile":
        return {}
    return {k.strip(): yaml.safe_load(v) for k, v in (item.split("=", 1) for item in group.split(",") if item.strip())}


def child(args) -> None:
    from batch_runner.config import load_job
    from batch_runner.engines import shutdown_engines
    from batch_runner.plan import trials

    settings = parse_settings(args.child)
    job = load_job(Path(args.out) / "work" / "w1.yaml", [])
    base = Path(args.out) / "runs" / (args.child.replace("/", "_").replace(",", "+")[:80] or "profile")
    job = trials.trial_job(job, args.rows, settings, base)
    t0 = time.perf_counter()
    trials.warm_up(job)
    start_s = time.perf_counter() - t0
    for i in range(args.repeats):  # a pass at a time, as the trial measures it, each line as it ends
        out = Path(f"{base}-{i}")
        shutil.rmtree(out, ignore_errors=True)
        s = trials.measure(job.model_copy(update={"output": job.output.model_copy(update={"dir": str(out)})}),
                            1)[0].this_run
        line = {"settings": args.child, "run": i, "start_s": round(start_s, 1), "generation_s": s.generation_s,
                "output_tok_s": s.output_tok_s, "requests": s.requests}
        with open(Path(args.out) / "repeat_runs.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
    shutdown_engines()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--out", default="repeat-out")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--settings", default="profile")
    ap.add_argument("--limit-s", type=float, default=185)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.smoke:  # the embedded model on the CPU
        from batch_runner.engines.models import resolve_model

        args.model = resolve_model("smollm2-135m-instruct")
    if args.child is not None:
        child(args)
        return 0
    import first_token

    Path(args.out).mkdir(parents=True, exist_ok=True)
    first_token.build_input(args, unique_documents=True)  # work/w1.yaml
    for group in (g.strip() for g in args.settings.split(";") if g.strip()):
        if first_token.run_group([sys.executable, __file__, *sys.argv[1:], "--child", group], args.limit_s) == "timeout":
            print(f"{group}: stopped after {args.limit_s} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
