"""Benchmark batch-run against raw vLLM and transformers' static batching, in one invocation.

Every variant runs in its own process, one after the other, on the same machine; the parent
builds the workloads, samples GPU memory through NVML while each child runs, measures the card's
bf16 matmul rate, and prints one table last (also written as Markdown and JSON).

    python bench/bench.py --model $GPU_MODELS/mistral-7b-shape --out DIR            # everything
    python bench/bench.py --model ... --out DIR --only raw,raw-tuned --workloads w1  # a subset
    python bench/bench.py --smoke --out DIR                                          # CPU, tiny

Workloads (token counts measured with the model's tokenizer):
    w1  2000 rows, one 1000-token system prompt, 300-token documents, 128 output tokens
    w2  400 distinct 2000-token prefixes x 10 rows, 100-token documents, 64 output tokens, shuffled
    w3  2000 unique 500-1500-token prompts, 256 output tokens
    w4  w1 with 6000 rows, for executor.data_parallel 1 against 2 (--workloads w4, two GPUs)
    dt  datatrove-like: 3000 unique 30-300-token prompts, 256-1024 output tokens drawn per row; its model
        is the SmolLM2-135M shape (--models, default dt=smollm2-135m-shape), the others' is --model
    d7  decode-heavy: 1000 unique ~850-token prompts, 1000 output tokens each

Variants of issue 24: batch-run (engine.max_num_seqs auto, the default), batch-run-fixed (512: the
throughput profile before auto), batch-run-fp8kv (model.kv_cache_dtype fp8, auto sized for it),
raw-tuned (LLM.generate with the fixed profile's arguments).

Per-workload models: `--models dt=smollm2-135m-shape` (the default) runs dt on a SmolLM2-135M-shape folder
the harness writes itself (config of SmolLM2-135M, tokenizer files of $GPU_MODELS/mistral-1b-shape), and
every other workload on --model, in one invocation:

    python bench/bench.py --out DIR --workloads dt,d7,w1 --only batch-run-fixed,batch-run,batch-run-fixed,batch-run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's batch_runner, as its `-m batch_runner.cli` runs (cwd=ROOT) use

WORKLOADS = {
    "w1": dict(rows=2000, prefixes=1, prefix_tokens=1000, doc_tokens=(300, 300), max_tokens=128),
    "w2": dict(rows=4000, prefixes=400, prefix_tokens=2000, doc_tokens=(100, 100), max_tokens=64),
    "w3": dict(rows=2000, prefixes=0, prefix_tokens=0, doc_tokens=(500, 1500), max_tokens=256),
    # w1 three times over, so that each of two engines still runs long past its ramp-up
    "w4": dict(rows=6000, prefixes=1, prefix_tokens=1000, doc_tokens=(300, 300), max_tokens=128),
    # issue 24: a datatrove-like job (max_tokens drawn per row) and a decode-heavy one
    "dt": dict(rows=3000, prefixes=0, prefix_tokens=0, doc_tokens=(30, 300), max_tokens=(256, 1024)),
    "d7": dict(rows=1000, prefixes=0, prefix_tokens=0, doc_tokens=(840, 840), max_tokens=1000),
}
SMOKE = {"w1": dict(rows=6, prefixes=1, prefix_tokens=120, doc_tokens=(40, 40), max_tokens=8)}
# Which variants run on which workload (the matrix).
MATRIX = {
    "raw": ["w1", "w2", "w3"],
    "raw-tuned": ["w1", "w2", "w3", "dt", "d7"],
    "batch-run": ["w1", "w2", "w3", "dt", "d7"],  # engine.max_num_seqs auto (the default)
    "batch-run-fixed": ["w1", "dt", "d7"],  # engine.max_num_seqs 512: the throughput profile before auto
    "batch-run-fp8kv": ["dt", "d7"],  # an fp8 KV cache (model.kv_cache_dtype), sized by auto for it
    "batch-run-nocache": ["w1"],
    "batch-run-nogroup": ["w2"],
    "traditional": ["w1"],
    "batch-run-dp1": ["w4", "w2"],  # executor.data_parallel 1 against 2 (a two-GPU machine)
    "batch-run-dp2": ["w4", "w2"],
}
SMALL_MODEL = "smollm2-135m-shape"
DEFAULT_MODELS = f"dt={SMALL_MODEL}"
# SmolLM2-135M's dimensions (its config.json on the Hub), vocab at least the borrowed tokenizer's
SMOLLM2_135M = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True,
                    max_position_embeddings=8192, vocab_size=49152, hidden_act="silu", rms_norm_eps=1e-5,
                    rope_theta=100000, torch_dtype="bfloat16")
WORDS = ("the of and to in is was for on that with as by at from his her it an are were be this which or has had "
         "not but they their one all been also more when who there can new into other two some time after first may "
         "over would only its about where years three such most between like during council river market school "
         "report budget water energy city north south village road bridge museum hospital station library").split()


# -- workloads -------------------------------------------------------------------------------
def _text(tok, rng: random.Random, ntok: int) -> str:
    """Random words, grown until the tokenizer counts at least ntok tokens, then trimmed."""
    words: list[str] = []
    while len(tok(" ".join(words), add_special_tokens=False).input_ids) < ntok:
        words.extend(rng.choice(WORDS) for _ in range(max(8, ntok // 3)))
    ids = tok(" ".join(words), add_special_tokens=False).input_ids[:ntok]
    return tok.decode(ids)


def build_workload(name: str, spec: dict, tok, folder: Path, seed: int = 0) -> dict:
    """Write <folder>/<name>.parquet (id, system, document); return its measured token counts."""
    rng = random.Random(seed)
    prefixes = [f"Instructions set {p}. " + _text(tok, rng, spec["prefix_tokens"]) for p in range(spec["prefixes"])]
    docs_pool = [_text(tok, rng, rng.randint(*spec["doc_tokens"])) for _ in range(min(spec["rows"], 256))]
    rows = []
    for i in range(spec["rows"]):
        system = prefixes[i // (spec["rows"] // spec["prefixes"])] if prefixes else None
        # a unique number in front keeps documents distinct (no accidental cache hits beyond the prefix)
        row = {"id": f"{name}-{i:05d}", "system": system, "document": f"{i}. {docs_pool[i % len(docs_pool)]}"}
        if isinstance(spec["max_tokens"], tuple):  # drawn per row, read by sampling.columns
            row["max_tokens"] = rng.randint(*spec["max_tokens"])
        rows.append(row)
    if spec["prefixes"] > 1:
        rng.shuffle(rows)  # w2: rows of one prefix are scattered through the input
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    prompt_tokens = [len(tok(tok.apply_chat_template(_messages(r), tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False).input_ids) for r in rows[:50]]
    return {"rows": len(rows), "mean_prompt_tokens_first50": sum(prompt_tokens) / len(prompt_tokens),
            "max_tokens": spec["max_tokens"], "model": getattr(tok, "name_or_path", None)}


def _messages(row: dict) -> list[dict]:
    return ([{"role": "system", "content": row["system"]}] if row["system"] else []) + \
        [{"role": "user", "content": row["document"]}]


def write_job(name: str, spec: dict, model: str, folder: Path, smoke: bool) -> Path:
    job = {
        "name": f"bench-{name}",
        "model": {"name": model, "max_model_len": 4096 if not smoke else 1024,
                  **({} if smoke else {"load_format": "dummy", "dtype": "bfloat16"})},
        "engine": {"profile": "throughput"},
        "input": {"path": str(folder / f"{name}.parquet"), "id_column": "id"},
        "prompt": {"system_column": "system", "template": "{{ document }}"} if spec["prefixes"] else
                  {"template": "{{ document }}"},
        "sampling": {"max_tokens": _most(spec["max_tokens"]), "temperature": 0.8, "top_p": 0.95, "ignore_eos": True,
                     "seed": 0, **({"columns": {"max_tokens": "max_tokens"}} if isinstance(spec["max_tokens"], tuple)
                                   else {})},
        "output": {"dir": str(folder / f"out-{name}"), "batch_size": 256 if not smoke else 2},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def _most(max_tokens: int | tuple[int, int]) -> int:
    return max_tokens[1] if isinstance(max_tokens, tuple) else max_tokens


def small_model(folder: Path) -> str:
    """A SmolLM2-135M-shape model folder (for dummy weights): SmolLM2-135M's config.json with the
    tokenizer files of $GPU_MODELS/mistral-1b-shape (its vocabulary fits in SmolLM2's 49,152), written
    into ``folder`` once; returns its path."""
    target = folder / SMALL_MODEL
    if (target / "config.json").exists():
        return str(target)
    source = Path(os.environ.get("GPU_MODELS", ".")) / "mistral-1b-shape"
    if not source.is_dir():
        raise SystemExit(f"{SMALL_MODEL}: needs the tokenizer of {source} (set GPU_MODELS)")
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name != "config.json" and not f.name.endswith((".safetensors", ".bin", ".pt")):
            (target / f.name).write_bytes(f.read_bytes())
    theirs = json.loads((source / "config.json").read_text())
    ids = {k: theirs[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in theirs}
    (target / "config.json").write_text(json.dumps({**SMOLLM2_135M, **ids}, indent=1))
    return str(target)


def resolve(model: str, folder: Path) -> str:
    return small_model(folder) if model == SMALL_MODEL else model


def models_of(args, workloads: list[str]) -> dict[str, str]:
    """Each workload's model: --models where it names one, else --model (resolved: folders written)."""
    given = dict(item.split("=", 1) for item in args.models.split(",") if "=" in item)
    return {w: resolve(given.get(w, args.model), Path(args.folder)) for w in workloads}


# -- children: one variant on one or more workloads --------------------------------------------
def _rendered(folder: Path, workload: str, tok) -> list[str]:
    rows = pq.read_table(folder / f"{workload}.parquet").to_pylist()
    return [tok.apply_chat_template(_messages(r), tokenize=False, add_generation_prompt=True) for r in rows]


def child_raw(args) -> None:
    """LLM.generate on the rendered prompts, rows in input order; vLLM defaults or the throughput profile."""
    from vllm import LLM, SamplingParams

    from batch_runner.config import EngineSpec, ModelSpec
    from batch_runner.engines import engine_arguments

    base = dict(max_model_len=args.max_model_len, **({} if args.smoke else {"load_format": "dummy", "dtype": "bfloat16"}))
    if args.variant == "raw-tuned":
        kwargs, _ = engine_arguments(args.model, ModelSpec(name=args.model, **base), EngineSpec())
    else:
        kwargs = dict(model=args.model, **base)
        if args.smoke:  # the CPU build needs these to start in seconds and fit in RAM
            kwargs.update(enforce_eager=True, gpu_memory_utilization=0.25)
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    start_s = time.perf_counter() - t0
    tok = llm.get_tokenizer()
    for workload in args.workloads:
        spec = (SMOKE if args.smoke else WORKLOADS)[workload]
        prompts = _rendered(Path(args.folder), workload, tok)
        wants = ([r["max_tokens"] for r in pq.read_table(Path(args.folder) / f"{workload}.parquet").to_pylist()]
                 if isinstance(spec["max_tokens"], tuple) else [spec["max_tokens"]])
        sp = [SamplingParams(max_tokens=m, temperature=0.8, top_p=0.95, ignore_eos=True, seed=0) for m in wants]
        sp = sp if len(sp) > 1 else sp[0]
        t1 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        gen_s = time.perf_counter() - t1
        _emit(args, workload, start_s, gen_s, len(outs),
              sum(len(o.prompt_token_ids) for o in outs), sum(o.num_cached_tokens or 0 for o in outs),
              sum(len(o.outputs[0].token_ids) for o in outs))
        start_s = 0.0  # the engine started once, for the first workload


def child_batch_run(args) -> None:
    """The CLI end to end, Parquet in and out, timed from outside; generation time from its summary."""
    workload = args.workloads[0]
    folder = Path(args.folder)
    job = folder / f"{workload}.yaml"
    extra = {"batch-run-nocache": ["--set", "engine.enable_prefix_caching=false"],
             "batch-run-nogroup": ["--set", "prompt.group_by_prefix=false"],
             "batch-run-fixed": ["--set", "engine.max_num_seqs=512"],
             "batch-run-fp8kv": ["--set", "model.kv_cache_dtype=fp8"],
             "batch-run-dp1": ["--set", "executor.data_parallel=1"],
             "batch-run-dp2": ["--set", "executor.data_parallel=2"]}.get(args.variant, [])
    out = folder / f"out-{workload}-{args.variant}"
    cmd = [sys.executable, "-m", "batch_runner.cli", "run", str(job), "--output", str(out), "--fresh", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"batch-run exited {proc.returncode}")
    if args.variant.startswith("batch-run-dp"):
        s = _stats_totals(out / "stats")  # the engines of data_parallel write one summary each
    else:
        s = json.loads((out / "summary.json").read_text())["this_run"]
    _emit(args, workload, wall - s["generation_s"], s["generation_s"], s["requests"], s["prompt_tokens"],
          s["cached_prompt_tokens"], s["output_tokens"], output_dir=str(out))


def _stats_totals(stats: Path) -> dict:
    """Totals over every shard's batches; generation time from the first batch's submission to the last's end."""
    import pyarrow.compute as pc

    t = pq.ParquetDataset(stats).read()
    span = pc.max(t["finished_at"]).as_py() - pc.min(t["submitted_at"]).as_py()
    return {"generation_s": span.total_seconds(), **{k: pc.sum(t[c]).as_py() for k, c in [
        ("requests", "requests"), ("prompt_tokens", "prompt_tokens"), ("cached_prompt_tokens", "cached_prompt_tokens"),
        ("output_tokens", "output_tokens")]}}


def child_traditional(args) -> None:
    """transformers generate with padded static batches: the largest power-of-two batch that fits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    workload = args.workloads[0]
    spec = (SMOKE if args.smoke else WORKLOADS)[workload]
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    if args.smoke:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:  # config only: random weights, same speed and memory as the real model, made on the GPU
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=dtype)
    model.to(device).eval()
    start_s = time.perf_counter() - t0
    prompts = _rendered(Path(args.folder), workload, tok)[: args.traditional_rows]
    batch = args.traditional_batch
    while True:
        try:
            t1 = time.perf_counter()
            n_in = n_out = 0
            for i in range(0, len(prompts), batch):
                enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=spec["max_tokens"], min_new_tokens=spec["max_tokens"],
                                         do_sample=True, temperature=0.8, top_p=0.95, pad_token_id=tok.pad_token_id)
                n_in += int(enc["attention_mask"].sum())
                n_out += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
            break
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
            if batch == 0:
                raise
    gen_s = time.perf_counter() - t1
    _emit(args, workload, start_s, gen_s, len(prompts), n_in, 0, n_out, batch=batch)


def _emit(args, workload, start_s, gen_s, requests, prompt_tokens, cached, output_tokens, **extra) -> None:
    r = dict(variant=args.variant, workload=workload, start_s=round(start_s, 1), gen_s=round(gen_s, 2),
             requests=requests, prompt_tokens=prompt_tokens, cached_tokens=cached, output_tokens=output_tokens,
             **extra)
    print("RESULT " + json.dumps(r), flush=True)


# -- parent ----------------------------------------------------------------------------------------
class GpuPeak:
    """Peak GPU memory used on the device while a child runs (NVML sees other processes)."""

    def __init__(self):
        self.peak = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nv = pynvml
        except Exception:  # no GPU: no figure
            self._h = []

    def __enter__(self):
        if self._h:
            self.peak = 0.0
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            used = sum(self._nv.nvmlDeviceGetMemoryInfo(h).used for h in self._h) / 2**30
            self.peak = max(self.peak, used)
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()


def matmul_tflops() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return rate


def model_params(model: str) -> float:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model)
    h, L, v, inter = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    kv = getattr(c, "num_key_value_heads", c.num_attention_heads) * (h // c.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    return L * per_layer + (1 if getattr(c, "tie_word_embeddings", False) else 2) * v * h


def run_child(args, variant: str, workloads: list[str]) -> list[dict]:
    model = args.model_of.get(workloads[0], args.model)  # plan_children: one model per child
    cmd = [sys.executable, __file__, "--child", variant, "--model", model, "--folder", str(args.folder),
           "--workloads", ",".join(workloads), "--max-model-len", str(args.max_model_len),
           "--traditional-rows", str(args.traditional_rows), "--traditional-batch", str(args.traditional_batch)]
    cmd += ["--smoke"] if args.smoke else []
    log = Path(args.out) / f"log-{variant}.txt"
    t0 = time.perf_counter()
    with GpuPeak() as gpu, open(log, "w") as f:
        code, stdout = _run_bounded(cmd, f, args.variant_timeout)
    wall = time.perf_counter() - t0
    results = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code != 0 or not results:
        print(f"variant {variant} failed ({code}); see {log}", flush=True)
        return [dict(variant=variant, workload=w, failed=f"exit {code}") for w in workloads]
    for r in results:
        if r.get("output_dir"):  # keep batch-run's batch stats and engine timeline, one file each
            for kind in ("stats", "timeline"):
                folder = Path(r["output_dir"]) / kind
                if folder.is_dir():
                    table = pq.ParquetDataset(folder).read()
                    name = f"{kind}-{r['workload']}-{variant}-{time.strftime('%H%M%S')}.parquet"
                    pq.write_table(table, Path(args.out) / name)
            r.pop("output_dir")
        r["process_wall_s"] = round(wall, 1)
        r["gpu_peak_gb"] = round(gpu.peak, 2) if gpu.peak is not None else None
    return results


def _run_bounded(cmd: list[str], log, limit_s: float) -> tuple[int | str, str]:
    """Run one variant in a process group of its own; past ``limit_s`` the whole group is killed (an
    engine process left behind would hold the GPU's memory, and every later variant would fail)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    _RUNNING.add(proc.pid)
    try:
        stdout, _ = proc.communicate(timeout=limit_s)
        return proc.returncode, stdout
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        return f"timeout after {limit_s:.0f} s", stdout
    finally:
        _RUNNING.discard(proc.pid)


_RUNNING: set[int] = set()  # process groups of the variants running now


def _stopped(*_) -> None:
    """The harness stopped from outside (gpu-run.sh's timeout sends SIGTERM) takes its variants' groups
    with it: seen on the H200, a raw-tuned engine left behind held 136 GiB and the next call failed."""
    for pgid in list(_RUNNING):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(124)


def derive(r: dict, params: float, tflops: float | None) -> dict:
    if "failed" in r:
        return r
    g = r["gen_s"]
    computed = r["prompt_tokens"] - r["cached_tokens"] + r["output_tokens"]
    r.update(out_tok_s=round(r["output_tokens"] / g, 1), total_tok_s=round((r["prompt_tokens"] + r["output_tokens"]) / g, 1),
             req_s=round(r["requests"] / g, 2), wall_with_start_s=round(g + r["start_s"], 1),
             cache_hit=round(r["cached_tokens"] / r["prompt_tokens"], 3) if r["prompt_tokens"] else 0.0,
             compute_share=round(computed * 2 * params / g / (tflops * 1e12), 3) if tflops else None)
    return r


def table(rows: list[dict]) -> str:
    head = ["workload", "variant", "out tok/s", "total tok/s", "req/s", "gen s", "start s", "cache hit",
            "GPU peak GB", "bf16 share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["workload"], list(MATRIX).index(r["variant"]))):
        if "failed" in r:
            lines.append(f"| {r['workload']} | {r['variant']} | failed: {r['failed']} |" + " |" * 7)
            continue
        lines.append("| " + " | ".join(str(x) for x in [
            r["workload"], r["variant"], f"{r['out_tok_s']:,.0f}", f"{r['total_tok_s']:,.0f}", r["req_s"], r["gen_s"],
            r["start_s"], f"{r['cache_hit']:.1%}", r.get("gpu_peak_gb"), r.get("compute_share")]) + " |")
    return "\n".join(lines)


def versions() -> dict:
    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node()}
    for mod in ("vllm", "torch", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # informational
            info[mod] = None
    try:
        import torch

        info["card"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # informational
        info["card"] = None
    return info


def _save(out: Path, info: dict, rows: list[dict]) -> None:
    for r in rows:
        params = info["params_by_workload"].get(r["workload"], info["params"])
        derive(r, params, info["matmul_tflops_bf16"]) if "out_tok_s" not in r else None
    (out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))


def parent(args) -> int:
    signal.signal(signal.SIGTERM, _stopped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.folder = out / "work"
    args.folder.mkdir(exist_ok=True)
    from transformers import AutoTokenizer

    if args.smoke:
        from batch_runner.engines.models import resolve_model

        args.model = resolve_model("smollm2-135m-instruct")
        args.models = ""
    specs = SMOKE if args.smoke else WORKLOADS
    wanted = [w for w in args.workloads if w in specs]
    args.model = resolve(args.model, args.folder)
    args.model_of = models_of(args, wanted)
    info = {"versions": versions(), "workloads": {}, "models": args.model_of}
    for w in wanted:
        tok = AutoTokenizer.from_pretrained(args.model_of[w])
        info["workloads"][w] = build_workload(w, specs[w], tok, args.folder)
        write_job(w, specs[w], args.model_of[w], args.folder, args.smoke)
    info["matmul_tflops_bf16"] = matmul_tflops()
    info["params"] = model_params(args.model_of[wanted[0]] if wanted else args.model)
    info["params_by_workload"] = {w: model_params(m) for w, m in args.model_of.items()}
    print(json.dumps(info), flush=True)
    rows: list[dict] = []
    children = plan_children(args.only, wanted, args.model_of)
    if args.smoke:  # nothing is measured in smoke mode: the children may share the machine
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(children)) as pool:
            done = list(pool.map(lambda c: run_child(args, *c), children))
    else:
        done = []
        for child in children:  # one after the other: they measure the machine
            done.append(run_child(args, *child))
            _save(out, info, [r for d in done for r in d])
    rows = [r for d in done for r in d]
    _save(out, info, rows)
    md = table(rows)
    (out / "results.md").write_text(md + "\n")
    print(md, flush=True)
    return 0 if all("failed" not in r for r in rows) else 1


def plan_children(only: list[str], wanted: list[str], model_of: dict[str, str] | None = None
                  ) -> list[tuple[str, list[str]]]:
    """The child processes in the order --only names them, so that "a,b,a,b" interleaves: a
    batch-run variant runs one child per workload, the others one child for all their workloads of
    one model (``model_of``: each workload's)."""
    children: list[tuple[str, list[str]]] = []
    model_of = model_of or {}
    for v in only:
        ws = [w for w in MATRIX[v] if w in wanted]
        if v.startswith("batch-run"):
            children += [(v, [w]) for w in ws]
            continue
        for model in dict.fromkeys(model_of.get(w) for w in ws):  # in order of first use
            children.append((v, [w for w in ws if model_of.get(w) == model]))
    return children


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(os.environ.get("GPU_MODELS", "."), "mistral-7b-shape"),
                    help=f"the workloads' model (a folder or hub id, or {SMALL_MODEL}) where --models names none")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="per-workload models, WORKLOAD=MODEL,... (default: %(default)s); '' for --model everywhere")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--workloads", default="w1,w2,w3")
    ap.add_argument("--only", default=",".join(MATRIX), help="variants to run, comma-separated")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run with the embedded model")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--traditional-rows", type=int, default=256)
    ap.add_argument("--traditional-batch", type=int, default=64)
    ap.add_argument("--variant-timeout", type=float, default=300.0,
                    help="seconds each variant's process may run; then its process group is killed")
    ap.add_argument("--child")
    ap.add_argument("--folder")
    args = ap.parse_args()
    args.workloads = args.workloads.split(",")
    args.only = args.only.split(",")
    if args.smoke:
        args.max_model_len = 1024
        args.traditional_rows = min(args.traditional_rows, 4)
        args.traditional_batch = min(args.traditional_batch, 4)
    if args.child:
        args.variant = args.child
        if args.child in ("raw", "raw-tuned"):
            child_raw(args)
        elif args.child == "traditional":
            child_traditional(args)
        else:
            child_batch_run(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
