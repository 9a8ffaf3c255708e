"""`estimate` against the real run, then `tune`, on one GPU in one call.

    python bench/experiments/planning.py --model MODEL_DIR --out DIR [--rows 20000] [--sample 500,1024]
                             [--steps warm,estimate,run,tune] [--warm SETS] [--tune-rows 2000]
                             [--tune-budget-min 4] [--tune-knob max_num_seqs]

0. With --steps warm: the W1 job on 100 rows once for each group of settings in --warm.
1. A W1-shaped job of --rows rows (W1's 2,000 rows repeated, unique ids and unique documents).
2. `batch-run estimate` from its first --sample rows (each size in turn): the expected generation time.
3. The whole job with `batch-run`: the measured generation time (summary.json).
4. `batch-run tune` on the first --tune-rows rows of W1 (or, --tune-job big, of the --rows job), within --tune-budget-min minutes.
Every step is a CLI process of its own with its own time limit; its output lands in DIR as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def cli(out: Path, name: str, args: list[str], limit_s: float) -> subprocess.CompletedProcess | None:
    """One CLI process in a session of its own; past ``limit_s`` its whole group is killed, so that
    no engine process of it holds the GPU for the next step."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batch_runner.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        (out / f"{name}.log").write_text(f"timeout after {limit_s} s\n{stdout}\n{stderr}")
        print(f"{name}: timeout after {limit_s} s", flush=True)
        return None
    (out / f"{name}.log").write_text(stdout + "\n--- stderr ---\n" + stderr[-20000:])
    print(f"{name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s\n{stdout}", flush=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def warm(out: Path, job: Path, groups: str) -> None:
    """Compile and capture the engine of each ``;``-separated group of --set options on a few rows,
    so that tune's trials of those settings start warm (on a fresh H200 the first start of a setting
    took 93 to 137 s, a later one 40 to 71 s) and a short budget reaches more of its grid."""
    for i, group in enumerate(g.strip() for g in groups.split(";") if g.strip()):
        items = [] if group == "profile" else [item.strip() for item in group.split(",") if item.strip()]
        sets = [arg for item in items for arg in ("--set", item)]
        cli(out, f"warm-{i}", ["run", str(job), "--limit", "100", "--output", str(out / "work" / f"warm-{i}"), *sets],
            200)


def estimate_from(out: Path, job: Path, sample: int) -> dict:
    est = cli(out, f"estimate-{sample}", ["estimate", str(job), "--rows", str(sample), "--price", "1"], 300)
    got: dict = {"sample": sample}
    if est is not None and (m := re.search(r"generation: [\d.]+ h \(([\d,]+) s\)", est.stdout)):
        got["estimated_generation_s"] = float(m.group(1).replace(",", ""))
        if (t := re.search(r"trial: .* in ([\d.]+) s of generation \(([\d,.]+) output tok/s", est.stdout)):
            got["trial_generation_s"], got["trial_output_tok_s"] = float(t.group(1)), float(t.group(2).replace(",", ""))
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model folder (dummy weights are loaded)")
    ap.add_argument("--out", default="planning-out")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--sample", default="500", help="trial sizes for estimate, comma-separated")
    ap.add_argument("--steps", default="estimate,run,tune", help="which of warm, estimate, run, tune")
    ap.add_argument("--warm", default="", help="for --steps warm: --set groups to compile first, "
                    "';' between groups, ',' between the settings of one ('profile': the job as it is)")
    ap.add_argument("--tune-rows", type=int, default=2000)
    ap.add_argument("--tune-job", choices=("w1", "big"), default="w1",
                    help="tune on W1 (2,000 rows) or on the --rows job (for a sample larger than W1)")
    ap.add_argument("--tune-budget-min", type=float, default=4.0)
    ap.add_argument("--tune-knob", action="append", default=[], help="tune's --knob (repeatable)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    steps = set(args.steps.split(","))
    if args.smoke:  # the embedded model on the CPU
        sys.path.insert(0, str(ROOT))
        from batch_runner.engines.models import resolve_model

        args.model = resolve_model("smollm2-135m-instruct")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import first_token

    args.limit_s = None
    job = first_token.build_input(args, unique_documents=True)  # work/big.yaml and work/w1.yaml (2,000 rows)
    result: dict = {"rows": args.rows, "model": args.model, "estimates": []}

    def save() -> None:  # after each step, so that a call cut short keeps what it measured
        (out / "planning.json").write_text(json.dumps(result, indent=1))

    if "warm" in steps:
        warm(out, out / "work" / "w1.yaml", args.warm)
    if "estimate" in steps:
        for sample in (int(x) for x in args.sample.split(",")):
            result["estimates"].append(estimate_from(out, job, sample))
            save()
    if "run" in steps:
        run = cli(out, "run", ["run", str(job), "--output", str(out / "work" / "out-full")], 300)
        summary = out / "work" / "out-full" / "summary.json"
        if run is not None and summary.exists():
            s = json.loads(summary.read_text())
            result["measured_generation_s"] = s["this_run"]["generation_s"]
            result["measured_output_tok_s"] = s["this_run"]["output_tok_s"]
            for e in result["estimates"]:
                if "estimated_generation_s" in e:
                    e["estimate_over_measured"] = round(e["estimated_generation_s"] / result["measured_generation_s"], 3)
        save()
    print(json.dumps(result), flush=True)
    if "tune" in steps:
        tuned = out / "work" / f"{args.tune_job}.yaml"
        cli(out, "tune", ["tune", str(tuned), "--rows", str(args.tune_rows), "--budget", str(args.tune_budget_min),
                          "--trial-limit", "3", "--out", str(out / "tune"),
                          *[a for k in args.tune_knob for a in ("--knob", k)]], args.tune_budget_min * 60 + 60)
        if (out / "tune" / "tune.json").exists():
            (out / "tune.json").write_text((out / "tune" / "tune.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
