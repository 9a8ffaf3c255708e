"""The engine sized from the job (engines/sizing.py): the choice over plain numbers, the model
config and device readings it rests on, and how it reaches the engine's arguments."""

from types import SimpleNamespace

import pytest
from conftest import SUMMARIZE

from batch_runner.config import EngineSpec, ModelSpec, load_job
from batch_runner.engines import sizing, vllm_engine
from batch_runner.engines.sizing import RowTokens, choose, kv_bytes_per_token, kv_tokens_estimate, shape_of

H200 = 143_771 * 2**20  # bytes, as NVML reports the card
SMOLLM2_135M = SimpleNamespace(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                               intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                               torch_dtype="bfloat16")
MISTRAL_7B = SimpleNamespace(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=14336, vocab_size=32000, torch_dtype="bfloat16")
DT = RowTokens(rows=1000, mean_prompt_tokens=200, mean_max_tokens=640, exact=True)  # the datatrove-like job
D7 = RowTokens(rows=1000, mean_prompt_tokens=870, mean_max_tokens=1000, exact=True)  # decode-heavy 7B


def estimate(config, util=0.95, kv_bytes=2, batched=32768) -> int:
    shape = shape_of(config)
    return kv_tokens_estimate(shape, H200, util, shape.params * shape.dtype_bytes, kv_bytes, batched)


def test_the_kv_estimate_of_a_135m_model_on_an_h200_is_near_what_vllm_reported():
    """vLLM 0.26.0 reported a 6.1 M-token KV cache for the SmolLM2-135M shape at 0.95 of an H200 (issue 24)."""
    assert kv_bytes_per_token(shape_of(SMOLLM2_135M), 2) == 30 * 3 * 64 * 2 * 2
    assert 5.7e6 < estimate(SMOLLM2_135M) <= 6.1e6  # at or a little below: an estimate must not promise more


def test_a_small_model_with_long_outputs_fills_the_card_up_to_the_ceiling():
    s = choose(estimate(SMOLLM2_135M), DT, shard_rows=3000, floor=512, batched_tokens=32768, graphs=True)
    assert s.max_num_seqs == sizing.AUTO_MAX_NUM_SEQS and s.max_cudagraph_capture_size == sizing.AUTO_MAX_NUM_SEQS
    assert s.per_seq_tokens == 848 and s.max_num_batched_tokens is None  # 32768 covers 2048
    assert "fit in" in s.reason and "ignore_eos" in s.reason


def test_a_7b_model_with_long_rows_gets_what_its_kv_cache_holds_not_more():
    kv = estimate(MISTRAL_7B)
    s = choose(kv, D7, shard_rows=1000, floor=512, batched_tokens=32768, graphs=True)
    assert s.max_num_seqs * s.per_seq_tokens <= kv and s.max_num_seqs < 512  # no preemption at their longest
    assert s.max_num_seqs % 16 == 0 and s.max_cudagraph_capture_size is None  # vLLM's default graphs cover it


def test_without_known_output_lengths_the_profiles_value_is_the_floor():
    """max_tokens only bounds outputs that usually end sooner: no job runs with fewer sequences than before."""
    rows = RowTokens(1000, 870, 4096)
    assert choose(estimate(MISTRAL_7B), rows, 10_000, 512, 32768, True).max_num_seqs == 512
    assert choose(estimate(MISTRAL_7B), RowTokens(1000, 870, 4096, exact=True), 10_000, 512, 32768,
                  True).max_num_seqs < 512


def test_an_unknown_capacity_keeps_the_profile():
    s = choose(None, DT, 3000, 512, 32768, True)
    assert (s.max_num_seqs, s.max_cudagraph_capture_size, s.kv_tokens_estimate) == (512, None, None)
    assert "could not be estimated" in s.reason


@pytest.mark.parametrize(("rows", "want"), [(100, 112), (3, 3), (700, 704)])
def test_no_more_sequences_than_the_shard_has(rows, want):
    s = choose(10**9, DT, rows, 512, 32768, True)
    assert s.max_num_seqs == want and "no more than the shard's" in s.reason


def test_samples_share_their_prompt_and_count_as_sequences():
    one, four = RowTokens(10, 800, 100), RowTokens(10, 800, 100, n=4)
    assert sizing.per_seq_tokens(one) == 912 and sizing.per_seq_tokens(four) == 304
    assert choose(10**9, four, 100, 16, 32768, True).max_num_seqs == 400  # 100 rows x 4 samples


def test_no_graphs_are_asked_for_without_graphs_and_the_step_budget_follows():
    s = choose(10**9, DT, 3000, 512, 1024, graphs=False)
    assert s.max_cudagraph_capture_size is None and s.max_num_batched_tokens == s.max_num_seqs == 2048


def test_an_fp8_kv_cache_holds_twice_the_tokens():
    assert estimate(MISTRAL_7B, kv_bytes=1) > 1.9 * estimate(MISTRAL_7B)


def test_shapes_of_other_configs():
    mla = SimpleNamespace(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, kv_lora_rank=32,
                          qk_rope_head_dim=8, intermediate_size=128, vocab_size=100)
    assert kv_bytes_per_token(shape_of(mla), 2) == 2 * 40 * 2
    assert shape_of(SimpleNamespace(vocab_size=10)) is None  # not a decoder's config: no estimate
    assert shape_of(MISTRAL_7B, "float32").dtype_bytes == 4
    assert kv_bytes_per_token(shape_of(MISTRAL_7B), 2, tp=2) == kv_bytes_per_token(shape_of(MISTRAL_7B), 2) / 2


def test_weights_on_disk_are_counted_from_their_files(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    shape = shape_of(MISTRAL_7B)
    assert sizing.weight_bytes(str(tmp_path), shape, "auto") == 1000
    assert sizing.weight_bytes(str(tmp_path), shape, "dummy") == shape.params * 2  # dummy weights: none loaded


# -- the job's settings -------------------------------------------------------------------------
def test_auto_is_the_throughput_profiles_default_and_an_explicit_value_wins():
    assert EngineSpec().sized_from_job and EngineSpec(max_num_seqs="auto", profile="balanced").sized_from_job
    assert not EngineSpec(max_num_seqs=512).sized_from_job
    assert not EngineSpec(profile="balanced").sized_from_job and not EngineSpec(profile="latency").sized_from_job
    assert not EngineSpec(extra={"max_num_seqs": 64}).sized_from_job and not EngineSpec(backend="fake").sized_from_job
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        EngineSpec(max_num_seqs=0)


def _args(**engine) -> tuple[dict, ModelSpec, EngineSpec]:
    spec, model = EngineSpec(**engine), ModelSpec(name="m")
    args = dict(vllm_engine.PROFILES[spec.profile], model="m", **spec.model_dump(
        exclude={"backend", "profile", "extra", "max_num_seqs"}, exclude_none=True), **spec.extra)
    return args, model, spec


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(vllm_engine, "is_cpu_platform", lambda: False)
    monkeypatch.setattr(vllm_engine, "estimate_kv_tokens", lambda *a: 6_000_000)


def test_auto_size_sets_the_sequences_and_the_graphs_that_cover_them(gpu):
    args, model, spec = _args(extra={"compilation_config": {"mode": 3}})
    sized, s = vllm_engine.auto_size(args, model, spec, DT, 3000)
    assert sized["max_num_seqs"] == 2048 and s.max_num_seqs == 2048
    assert sized["compilation_config"] == {"mode": 3, "max_cudagraph_capture_size": 2048}
    assert args["max_num_seqs"] == 512  # the caller's args are not changed in place


def test_auto_size_leaves_explicit_settings_alone(gpu):
    args, model, spec = _args(max_num_seqs=512)
    assert vllm_engine.auto_size(args, model, spec, DT, 3000) == (args, None)
    args, model, spec = _args(max_num_batched_tokens=1024)  # the job's step budget bounds the sequences
    sized, s = vllm_engine.auto_size(args, model, spec, DT, 3000)
    assert sized["max_num_seqs"] == 1024 and sized["max_num_batched_tokens"] == 1024
    args, model, spec = _args(enforce_eager=True)
    assert "compilation_config" not in vllm_engine.auto_size(args, model, spec, DT, 3000)[0]
    for own in ({"cudagraph_capture_sizes": [1, 2, 4]}, 3):  # the job's own graphs, or a level: left as given
        args, model, spec = _args(extra={"compilation_config": own})
        sized, s = vllm_engine.auto_size(args, model, spec, DT, 3000)
        assert sized["compilation_config"] == own and s.max_cudagraph_capture_size is None


def test_on_the_cpu_the_capped_profile_stays(monkeypatch):
    monkeypatch.setattr(vllm_engine, "is_cpu_platform", lambda: True)
    args, model, spec = _args()
    assert vllm_engine.auto_size(args, model, spec, DT, 3000) == (args, None)


def test_the_fake_engine_takes_auto_as_its_default():
    job = load_job(SUMMARIZE, ["engine.backend=fake", "engine.max_num_seqs=auto"])
    from batch_runner.engines import fake

    assert fake.engine_arguments("m", job.model, job.engine)[0]["max_num_seqs"] == fake.FAKE_MAX_NUM_SEQS


def test_a_sizing_as_the_settings_every_trial_of_a_plan_runs():
    from batch_runner.plan.trials import sizing_settings

    s = choose(10**9, DT, 3000, 512, 32768, True)
    assert sizing_settings(s) == {"engine.max_num_seqs": 2048,
                                  "engine.extra.compilation_config.max_cudagraph_capture_size": 2048}
    assert sizing_settings(choose(None, DT, 3000, 512, 32768, True)) == {"engine.max_num_seqs": 512}


# -- the shard runner: applied before the start, measured after it --------------------------------
def test_the_shard_runner_applies_the_sizing_says_it_and_keeps_it_for_the_summary(monkeypatch, caplog):
    from batch_runner.runner import shard

    job = load_job(SUMMARIZE)
    chosen = choose(6_000_000, DT, 3000, 512, 32768, True)
    seen = {}

    def auto_size(args, model, engine, rows, shard_rows):
        seen.update(rows=rows, shard_rows=shard_rows)
        return dict(args, max_num_seqs=chosen.max_num_seqs), chosen

    monkeypatch.setattr(shard, "auto_size", auto_size)
    monkeypatch.setattr(shard, "row_tokens", lambda job, renderer: DT)
    ctx = SimpleNamespace(job=job, pre=SimpleNamespace(renderer=None, report=SimpleNamespace(shard_rows=3000)),
                          sizing=None)
    caplog.set_level("INFO", logger="batch_runner")
    args = shard._sized(ctx, {"max_num_seqs": 512})
    assert args == {"max_num_seqs": 2048} and ctx.sizing is chosen and seen == {"rows": DT, "shard_rows": 3000}
    assert "engine sized from the job: max_num_seqs 2048, CUDA graphs to 2048: " in caplog.text

    measured = shard._measured(chosen, 6_100_000)
    assert measured.kv_tokens == 6_100_000 and "KV cache: 6,100,000 tokens (estimated 6,000,000)" in caplog.text
    shard._measured(chosen, 1_000_000)  # 1,179 of 2,048 fit at their longest
    assert "holds 1179 of the 2048 sequences chosen" in caplog.text
    assert shard._measured(chosen, None) is chosen


def test_an_explicit_setting_is_not_sized(monkeypatch):
    from batch_runner.runner import shard

    monkeypatch.setattr(shard, "row_tokens", lambda *a: pytest.fail("an explicit setting needs no rows read"))
    ctx = SimpleNamespace(job=load_job(SUMMARIZE, ["engine.max_num_seqs=512"]), sizing=None)
    assert shard._sized(ctx, {"max_num_seqs": 512}) == {"max_num_seqs": 512} and ctx.sizing is None
