"""The GPU busy from the first second: a large input, time from engine ready to the first generated
token and to the first committed row, batch-run against a hand-tuned ``LLM.chat``; peak host memory.

    python bench/experiments/first_token.py --out DIR [--model $GPU_MODELS/mistral-7b-shape] [--rows 200000]

The input is W1's 2000 rows (one 1000-token system prompt, 300-token documents) repeated to
--rows, with unique ids. Each variant runs in a process group of its own with its own time limit,
and is stopped once it has what is measured:

- raw-tuned: ``LLM(**throughput profile)``, then ``llm.chat`` on every row's messages, as a user of
  vLLM writes it. vLLM renders and tokenizes the whole list before its first engine step; the
  first step's end is taken as the first generated token. It commits nothing before the end.
- batch-run: the shard runner in-process with a listener; the engine's first step that returns
  is the first generated token (the engine's own step, wrapped), the first ``batch`` event the
  first committed row.

Peak host memory: the high-water mark (VmHWM) of the variant's main process, and of it plus its
engine processes. Results in DIR/first_token.json as they come.
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
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def _hwm_gb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _tree_hwm_gb() -> float:
    from batch_runner.engines.reaper import descendants

    me = os.getpid()
    return _hwm_gb(me) + sum(_hwm_gb(p) for p in descendants(me))


def _emit(out: Path, variant: str, **fields) -> None:
    path = out / "first_token.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(variant, {}).update(fields)
    path.write_text(json.dumps(data, indent=1))


def build_input(args, unique_documents: bool = False) -> Path:
    """work/big.yaml: W1's rows repeated to --rows with unique ids. With ``unique_documents`` each
    repeat's document starts with its id, so that no prompt repeats past the shared system prompt
    (a repeated prompt would be served from the prefix cache, which a sample of the first rows
    cannot foresee)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from bench import SMOKE, WORKLOADS, build_workload, write_job

    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(args.model)
    spec = SMOKE["w1"] if args.smoke else WORKLOADS["w1"]
    build_workload("w1", spec, tok, work)
    base = pq.read_table(work / "w1.parquet").to_pylist()
    writer = None
    for start in range(0, args.rows, len(base)):
        chunk = [{**r, "id": f"r{start + i:07d}"} for i, r in enumerate(base[: args.rows - start])]
        if unique_documents:
            chunk = [{**r, "document": f"[{r['id']}] {r['document']}"} for r in chunk]
        table = pa.Table.from_pylist(chunk)
        writer = writer or pq.ParquetWriter(work / "big.parquet", table.schema)
        writer.write_table(table)
    writer.close()
    job = write_job("w1", spec, args.model, work, smoke=args.smoke)
    text = job.read_text().replace(str(work / "w1.parquet"), str(work / "big.parquet"))
    (work / "big.yaml").write_text(text)
    return work / "big.yaml"


def child_raw(args) -> None:
    import pyarrow.parquet as pq
    from vllm import LLM, SamplingParams

    from batch_runner.config import EngineSpec, ModelSpec
    from batch_runner.engines import engine_arguments

    out = Path(args.out)
    rows = pq.read_table(out / "work" / "big.parquet").to_pylist()
    chats = [[{"role": "system", "content": r["system"]}, {"role": "user", "content": r["document"]}] for r in rows]
    del rows
    weights = {} if args.smoke else {"load_format": "dummy", "dtype": "bfloat16"}
    kwargs, _ = engine_arguments(args.model, ModelSpec(name=args.model, max_model_len=4096 if not args.smoke else 1024,
                                                      **weights), EngineSpec())
    llm = LLM(**kwargs)
    ready = time.perf_counter()
    _emit(out, "raw-tuned", hwm_gb_at_ready=_hwm_gb(os.getpid()))
    engine = llm.llm_engine
    real_step, real_add = engine.step, engine.add_request
    added = [0]

    def add_request(*a, **kw):  # how far vLLM has got with the list: the rate, if the limit comes first
        added[0] += 1
        if added[0] % 20000 == 0:
            _emit(out, "raw-tuned", requests_added=added[0], requests_added_at_s=time.perf_counter() - ready,
                  hwm_gb=_hwm_gb(os.getpid()))
        return real_add(*a, **kw)

    engine.add_request = add_request

    def step():
        real_step()
        _emit(out, "raw-tuned", first_token_s=time.perf_counter() - ready, hwm_gb=_hwm_gb(os.getpid()),
              hwm_tree_gb=_tree_hwm_gb(), first_committed_row="none before the whole list finishes")
        os._exit(0)  # measured; the parent ends the engine's processes with the group

    engine.step = step
    llm.chat(chats, SamplingParams(max_tokens=8 if args.smoke else 128, ignore_eos=True, temperature=0.8, top_p=0.95, seed=0),
             use_tqdm=False)


def child_batch_run(args) -> None:
    from batch_runner.config import load_job
    from batch_runner.engines import vllm_engine as engine_mod
    from batch_runner.runner.shard import RunOptions, run_shard

    out = Path(args.out)
    job = load_job(out / "work" / "big.yaml", [f"output.dir={out}/work/out-batch-run"])
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    real_init = engine_mod.VllmEngine.__init__

    def init(self, engine_args):
        real_init(self, engine_args)
        marks["ready"] = time.perf_counter()
        _emit(out, "batch-run", preflight_and_start_s=marks["ready"] - t0)
        real_poll = self.poll

        def poll():
            done = real_poll()
            if "first_token" not in marks:
                marks["first_token"] = time.perf_counter()
                _emit(out, "batch-run", first_token_s=marks["first_token"] - marks["ready"])
            return done
        self.poll = poll

    engine_mod.VllmEngine.__init__ = init

    def listener(event) -> None:
        if event.kind == "batch":
            _emit(out, "batch-run", first_committed_row_s=time.perf_counter() - marks["ready"],
                  rows_committed=event.rows_done, hwm_gb=_hwm_gb(os.getpid()), hwm_tree_gb=_tree_hwm_gb())
            os._exit(0)

    run_shard(job, RunOptions(progress=False, listeners=[listener]))


def run_variant(args, variant: str, limit_s: float) -> str:
    return run_group([sys.executable, __file__, "--child", variant, *sys.argv[1:]], limit_s)


def run_group(cmd: list[str], limit_s: float) -> str:
    """``cmd`` in a session of its own, its whole group killed when it ends or runs over; its exit
    status, or "timeout"."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        code = "timeout"
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine's processes too: the GPU is free for the next
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(5)
    return str(code)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(os.environ.get("GPU_MODELS", "."), "mistral-7b-shape"))
    ap.add_argument("--out", default="first-token-out")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--variants", default="batch-run,raw-tuned")
    ap.add_argument("--limit-s", default="200,330", help="seconds per variant, in --variants order")
    ap.add_argument("--smoke", action="store_true", help="the embedded model on the CPU, tiny rows")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.smoke:
        from batch_runner.engines.models import resolve_model

        args.model = resolve_model("smollm2-135m-instruct")
    if args.child:
        {"raw-tuned": child_raw, "batch-run": child_batch_run}[args.child](args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_input(args)
    print(f"input of {args.rows} rows built in {time.perf_counter() - t0:.0f} s", flush=True)
    for variant, limit in zip(args.variants.split(","), map(float, args.limit_s.split(","))):
        code = run_variant(args, variant, limit)
        _emit(out, variant, exit=code, limit_s=limit)
        print(variant, json.loads((out / "first_token.json").read_text()).get(variant), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
