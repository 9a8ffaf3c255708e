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
