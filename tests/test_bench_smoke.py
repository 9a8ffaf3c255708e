"""The benchmark harness in its smoke mode (tiny model, a few rows, on the CPU), so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_variants_run_in_the_order_given_so_that_a_b_a_b_interleaves():
    sys.path.insert(0, str(ROOT / "bench"))
    from bench import plan_children

    order = [v for v, _ in plan_children(["raw-tuned", "batch-run", "raw-tuned", "batch-run"], ["w1"])]
    assert order == ["raw-tuned", "batch-run", "raw-tuned", "batch-run"]
    assert plan_children(["batch-run", "raw"], ["w1", "w2"]) == [
        ("batch-run", ["w1"]), ("batch-run", ["w2"]), ("raw", ["w1", "w2"])]
    assert plan_children(["traditional"], ["w2"]) == []  # no workload of its own
    # one engine per model: raw-tuned runs dt (the small model) and d7, w1 (the 7B) in two children
    models = {"dt": "small", "d7": "7b", "w1": "7b"}
    assert plan_children(["raw-tuned", "batch-run-fixed"], ["w1", "dt", "d7"], models) == [
        ("raw-tuned", ["w1", "d7"]), ("raw-tuned", ["dt"]),
        ("batch-run-fixed", ["w1"]), ("batch-run-fixed", ["dt"]), ("batch-run-fixed", ["d7"])]


def test_the_small_model_folder_is_smollm2_135m_with_a_borrowed_tokenizer(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import bench

    source = tmp_path / "models" / "mistral-1b-shape"
    source.mkdir(parents=True)
    (source / "config.json").write_text(json.dumps({"hidden_size": 2048, "bos_token_id": 1, "eos_token_id": 2}))
    (source / "tokenizer.json").write_text("{}")
    (source / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("GPU_MODELS", str(tmp_path / "models"))
    folder = Path(bench.resolve("smollm2-135m-shape", tmp_path / "work"))
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] and config["eos_token_id"] == 2
    assert (folder / "tokenizer.json").exists() and not (folder / "model.safetensors").exists()
    assert bench.resolve("some/model", tmp_path) == "some/model"
    assert bench.WORKLOADS["dt"]["max_tokens"] == (256, 1024) and bench.WORKLOADS["d7"]["rows"] == 1000


@pytest.mark.engine
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke", "--out", str(out),
                           "--only", "raw-tuned,batch-run,traditional"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"raw-tuned", "batch-run", "traditional"}
    for r in rows.values():
        assert r["requests"] > 0 and r["output_tokens"] > 0 and r["out_tok_s"] > 0
    assert rows["batch-run"]["requests"] == rows["raw-tuned"]["requests"] == 6
    assert rows["batch-run"]["cache_hit"] > 0  # the shared system prompt
    assert "| w1 | batch-run |" in (out / "results.md").read_text()


@pytest.mark.long
@pytest.mark.engine
def test_repeat_runs_smoke(tmp_path):
    # passes of one setting on one engine, each line written as it finishes
    script = ROOT / "bench" / "experiments" / "repeat_runs.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(tmp_path),
                           "--rows", "20", "--repeats", "2", "--settings", "profile"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "repeat_runs.jsonl").read_text().splitlines()]
    assert [r["run"] for r in runs] == [0, 1] and {r["settings"] for r in runs} == {"profile"}
    assert all(r["requests"] > 0 and r["output_tok_s"] > 0 and r["start_s"] > 0 for r in runs)
