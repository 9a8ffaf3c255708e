"""On the GPU machine: the request features through the CLI on vLLM's GPU build (an API check, not a
benchmark). Dummy weights make the text noise, so this checks that every path runs and what it
writes, not what the model says.

    python3 bench/experiments/gpu_features.py --model $GPU_MODELS/mistral-1b-shape --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"topic": {"type": "string", "enum": ["council", "sport", "other"]},
                                           "urgent": {"type": "boolean"}},
          "required": ["topic", "urgent"], "additionalProperties": False}


def make_adapter(model: str, folder: Path, seed: int, rank: int = 8) -> str:
    """A random PEFT LoRA adapter on q_proj and v_proj of the model."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model)
    head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q_out, kv_out = c.num_attention_heads * head, c.num_key_value_heads * head
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(c.num_hidden_layers):
        for proj, out_dim in (("q_proj", q_out), ("v_proj", kv_out)):
            p = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(rank, c.hidden_size, generator=gen) * 0.01).to(torch.bfloat16)
            tensors[f"{p}.lora_B.weight"] = (torch.randn(out_dim, rank, generator=gen) * 0.01).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none", "base_model_name_or_path": model}))
    return str(folder)


def chat(cid: str, text: str, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "base", "messages": [{"role": "user", "content": text}], **body}}


def run(job: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "batch_runner.cli", "run", str(job), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    (out.parent / f"{out.name}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adapters = {"a1": make_adapter(args.model, out / "a1", 1), "a2": make_adapter(args.model, out / "a2", 2)}
    lines = [chat(f"c{i}", f"Report number {i}: the council met.", max_tokens=16) for i in range(8)]
    lines[1]["body"].update(n=2, temperature=0.8, seed=1)
    lines[2]["body"].update(response_format={"type": "json_schema", "json_schema": {"name": "l", "schema": SCHEMA}},
                            max_tokens=40)
    lines[3]["body"].update(model="a2")  # the body's model names an adapter
    lines[4]["body"].update(temperature=-1)  # a bad per-row value: an error row
    lines.append({"custom_id": "p0", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "base", "prompt": "The council met on", "max_tokens": 12}})
    (out / "batch.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    job = {"name": "gpu-features",
           "model": {"name": args.model, "load_format": "dummy", "dtype": "bfloat16", "max_model_len": 2048,
                     "lora_adapters": adapters, "lora": "a1"},
           "engine": {"profile": "balanced", "gpu_memory_utilization": 0.85},
           "input": {"path": str(out / "batch.jsonl"), "format": "openai"},
           "sampling": {"max_tokens": 16}, "output": {"openai": True}}
    (out / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    result = {"openai_lora_json_n": run(out / "job.yaml", out / "res")}
    res = out / "res"
    if (res / "openai" / "results.jsonl").exists():
        ok = [json.loads(x) for x in (res / "openai" / "results.jsonl").read_text().splitlines()]
        err = [json.loads(x) for x in (res / "openai" / "errors.jsonl").read_text().splitlines()]
        by_id = {x["custom_id"]: x for x in ok}
        result |= {"ids_once": sorted([x["custom_id"] for x in ok + err]) == sorted(x["custom_id"] for x in lines),
                   "errors": {x["custom_id"]: x["error"]["code"] for x in err},
                   "n2_choices": len(by_id.get("c1", {}).get("response", {}).get("body", {}).get("choices", [])),
                   "completion_object": by_id.get("p0", {}).get("response", {}).get("body", {}).get("object")}
    print("RESULT " + json.dumps(result), flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
