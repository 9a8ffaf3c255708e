"""An engine that cannot start ends with advice naming the settings to change, not a bare traceback."""

import pytest
from conftest import write_job

pytestmark = [pytest.mark.engine, pytest.mark.own_engine]  # a start that fails: no shared engine


def test_kv_cache_that_does_not_fit_names_the_settings(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")  # the job's share of memory decides, as for a user
    job = write_job(tmp_path, engine={"gpu_memory_utilization": 0.0001})
    result = cli("run", job, "--limit", 2)
    assert result.exit_code == 1, result.output
    assert "the engine could not start" in result.output
    for setting in ("engine.gpu_memory_utilization", "model.max_model_len", "engine.max_num_seqs"):
        assert setting in result.output
    assert "Traceback" not in result.output


def test_fresh_with_a_value_vllm_refuses_leaves_a_complete_output_as_it_was(cli, fake, tmp_path):
    """issue 25 item 5: engine.extra values pass the pre-flight (the key is vLLM's) and fail only when
    vLLM builds its config; --fresh must not have moved anything by then. The complete output is
    made with the fake engine (the same job's files); the --fresh run is the real CLI and vLLM, in a
    process of its own: one engine attempt, which fails in seconds."""
    import hashlib
    import subprocess

    from conftest import ROOT, batch_run_cmd

    fake()
    job = write_job(tmp_path, sampling={"max_tokens": 8})
    assert cli("run", job, "--limit", 4).exit_code == 0
    out = tmp_path / "out"
    files = lambda: {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None  # noqa: E731
                     for p in sorted(tmp_path.rglob("*")) if not p.name.startswith(".lock-")}
    before, record = files(), (out / "job.json").read_text()
    run = subprocess.run(batch_run_cmd("run", job, "--limit", 4, "--fresh", "--set", "engine.backend=vllm",
                                       "--set", "engine.extra.max_num_seqs=-5"),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "could not start the engine with these settings" in run.stderr and "max_num_seqs" in run.stderr
    assert "the old results were left in place" in run.stderr and "moved the old results" not in run.stderr
    assert files() == before and (out / "job.json").read_text() == record
    assert not list(tmp_path.glob("out.replaced-*"))
