"""Planning a large run: `tune`'s sweep and recommendation, `estimate`'s arithmetic, and the cost
figures of the summary and the metrics.

The sweep's logic runs here with measured trials replaced by given figures (the trials' own path,
an engine per trial, runs for real in the `long` tier: test_planning_engine.py).
"""

import json

import pytest
from conftest import write_job

from batch_runner.cli import _hours
from batch_runner.errors import JobError
from batch_runner.observe.cost import cost_of
from batch_runner.plan import tune as tune_mod
from batch_runner.plan.estimate import InputTokens, estimate, report, wave_note
from batch_runner.plan.trials import TrialResult, folder_name


def fake_trials(monkeypatch, speeds: dict[str, list[float]], errors=()):
    """run_trial answering from ``speeds`` (trial name -> output tok/s of its runs, in order)."""
    calls = []

    def run_trial(job, name, settings, rows, scratch, limit_s, passes=1):
        assert passes == tune_mod.TRIAL_PASSES
        calls.append(name)
        base = name.removesuffix(" (re-run)")
        if base in errors:
            return TrialResult(name, settings, error="the engine could not start: out of memory")
        speed = speeds[base].pop(0)
        return TrialResult(name, settings, requests=rows, output_tokens=int(speed * 10), generation_s=10.0,
                           start_s=5.0, output_tok_s=speed, total_tok_s=speed * 3)

    monkeypatch.setattr(tune_mod, "run_trial", run_trial)
    return calls


BASE = {"max_num_seqs": 64, "max_num_batched_tokens": 4096}
KNOBS = ["max_num_seqs 128", "max_num_batched_tokens 8192", "max_num_seqs 32", "max_num_batched_tokens 2048"]


def test_a_faster_trial_confirmed_on_a_re_run_is_recommended(monkeypatch, tmp_path):
    speeds = {"profile": [100, 101], "max_num_seqs 32": [80], "max_num_seqs 128": [120], "max_num_seqs 256": [115],
              "max_num_batched_tokens 2048": [90], "max_num_batched_tokens 8192": [110],
              "max_num_batched_tokens 16384": [105], "best together": [130, 128]}
    calls = fake_trials(monkeypatch, speeds)
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 3600, 600, lambda line: None)
    # a doubling that helped is followed by one more (which did not help here)
    assert calls == ["profile", "max_num_seqs 128", "max_num_seqs 256", "max_num_batched_tokens 8192",
                     "max_num_batched_tokens 16384", "max_num_seqs 32", "max_num_batched_tokens 2048",
                     "best together", "profile (re-run)", "best together (re-run)"]
    assert result.best.settings == {"engine.max_num_seqs": 128, "engine.max_num_batched_tokens": 8192}
    assert result.gain == pytest.approx(128 / 101)
    text = tune_mod.recommendation(result)
    assert "--set engine.max_num_seqs=128 --set engine.max_num_batched_tokens=8192" in text
    assert "max_num_seqs: 128" in text and "1.27x" in text


def test_no_recommendation_slower_than_the_profile_on_a_re_run(monkeypatch, tmp_path):
    speeds = {"profile": [100, 104], "max_num_seqs 32": [80], "max_num_seqs 128": [103, 99], "max_num_seqs 256": [101],
              "max_num_batched_tokens 2048": [90], "max_num_batched_tokens 8192": [95]}
    calls = fake_trials(monkeypatch, speeds)
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 3600, 600, lambda line: None)
    assert calls[-2:] == ["profile (re-run)", "max_num_seqs 128 (re-run)"]  # 103 beat 100 in the sweep ...
    assert result.best is None and result.gain == 1.0  # ... but 99 lost to 104 on the re-run: noise
    assert "the job's settings as they are" in tune_mod.recommendation(result)


def test_a_lead_that_one_of_the_four_runs_contradicts_is_not_recommended(monkeypatch, tmp_path):
    speeds = {"profile": [100, 115], "max_num_seqs 32": [80], "max_num_seqs 128": [112, 116], "max_num_seqs 256": [90],
              "max_num_batched_tokens 2048": [90], "max_num_batched_tokens 8192": [95]}
    fake_trials(monkeypatch, speeds)
    said: list[str] = []
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 3600, 600, said.append)
    # 116 beat 115 on the re-run, but 112 in the sweep did not: within the runs' spread
    assert len(result.recheck) == 2 and result.best is None
    assert tune_mod.recommendation(result) == (
        "best: the job's settings as they are (no trial beat them in both its runs): max_num_seqs 128 ran at "
        "1.12x them in the sweep and 1.01x on the re-run")
    # the fake trials generate for 10 s: too short to tell settings apart from the runs' own spread
    assert any(line.startswith("note: the profile's trial generated for 10 s") for line in said)


def test_a_trial_that_cannot_start_is_a_row_and_the_budget_bounds_the_sweep(monkeypatch, tmp_path):
    speeds = {"profile": [100], "max_num_batched_tokens 8192": [80]}
    calls = fake_trials(monkeypatch, speeds, errors=("max_num_seqs 128",))
    said = []
    clock = iter(range(0, 10_000, 20))  # each look at the clock: 20 s later
    monkeypatch.setattr(tune_mod.time, "monotonic", lambda: next(clock))
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 150, 600, said.append)
    assert calls == ["profile", "max_num_seqs 128", "max_num_batched_tokens 8192"]
    assert any(line.startswith("skipped") for line in said)
    table = tune_mod.table(result)
    assert "max_num_seqs 128" in table and "failed: the engine could not start" in table
    assert result.best is None


def test_the_budget_keeps_room_for_the_re_runs(monkeypatch, tmp_path):
    speeds = {"profile": [100, 101], "max_num_seqs 32": [80], "max_num_seqs 128": [120, 119], "max_num_seqs 256": [90],
              "max_num_batched_tokens 2048": [90], "max_num_batched_tokens 8192": [110],
              "max_num_batched_tokens 16384": [90]}
    now = [0.0]
    monkeypatch.setattr(tune_mod.time, "monotonic", lambda: now[0])
    calls = fake_trials(monkeypatch, speeds)
    inner = tune_mod.run_trial

    def forty_seconds_each(*args):
        now[0] += 40.0  # a trial of 10 s of generation and 5 s of start, seen as 40 s of the budget
        t = inner(*args)
        t.generation_s, t.start_s = 30.0, 10.0
        return t

    monkeypatch.setattr(tune_mod, "run_trial", forty_seconds_each)
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 300, 600, lambda line: None)
    # "best together" would have fitted alone, but not with both re-runs after it: it is skipped
    assert calls == ["profile", "max_num_seqs 128", "max_num_seqs 256", "max_num_batched_tokens 8192",
                     "max_num_batched_tokens 16384", "profile (re-run)", "max_num_seqs 128 (re-run)"]
    assert result.best.name == "max_num_seqs 128" and result.gain == pytest.approx(119 / 101)


def timed_trials(monkeypatch, speeds: dict[str, list[float]], costs: dict[str, float]) -> list[str]:
    """fake_trials whose trials each take ``costs[name]`` seconds of a fake clock (a re-run 40 s
    less: its graphs are cached), reported as 10 s of generation and the rest as start."""
    now = [0.0]
    monkeypatch.setattr(tune_mod.time, "monotonic", lambda: now[0])
    calls = fake_trials(monkeypatch, speeds)
    inner = tune_mod.run_trial

    def timed(job, name, *args):
        t = inner(job, name, *args)
        base = name.removesuffix(" (re-run)")
        t.generation_s, t.start_s = 10.0, costs[base] - 10.0
        now[0] += costs[base] - (40.0 if name != base else 0.0)
        return t

    monkeypatch.setattr(tune_mod, "run_trial", timed)
    return calls


def test_the_re_runs_run_together_or_not_at_all(monkeypatch, tmp_path):
    # on an H200 the old reserve (twice the longest trial) skipped the profile's re-run and ran the
    # leader's alone; here 165 s are left after two trials and the pair needs 65 + 110 s
    speeds = {"profile": [100], "max_num_seqs 128": [120]}
    calls = timed_trials(monkeypatch, speeds, {"profile": 65.0, "max_num_seqs 128": 110.0})
    said = []
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 340, 600, said.append)
    assert calls == ["profile", "max_num_seqs 128"]
    assert result.recheck == [] and result.best is None and result.candidate.name == "max_num_seqs 128"
    assert any(line.startswith("skipped the re-runs") for line in said)
    assert "led the sweep, but the budget left no room" in tune_mod.recommendation(result)


def test_a_re_run_is_reckoned_at_its_own_first_time(monkeypatch, tmp_path):
    # the H200's sweep of 8.5 min: after three trials 217 s are left, too few for a fourth and its
    # re-runs (110 + 65 + 110 s), enough for the pair (65 + 110 s) that the old reserve (2 x 110) cut
    speeds = {"profile": [100, 101], "max_num_seqs 128": [120, 119], "max_num_seqs 256": [110]}
    costs = {"profile": 65.0, "max_num_seqs 128": 110.0, "max_num_seqs 256": 108.0}
    calls = timed_trials(monkeypatch, speeds, costs)
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 500, 600, lambda line: None)
    assert calls == ["profile", "max_num_seqs 128", "max_num_seqs 256", "profile (re-run)", "max_num_seqs 128 (re-run)"]
    assert result.best.name == "max_num_seqs 128" and result.gain == pytest.approx(119 / 101)


def test_a_step_that_helped_is_followed_while_it_helps(monkeypatch, tmp_path):
    speeds = {"profile": [100, 100], "max_num_seqs 128": [110], "max_num_seqs 256": [120, 121], "max_num_seqs 512": [118],
              "max_num_batched_tokens 8192": [90], "max_num_seqs 32": [80], "max_num_batched_tokens 2048": [95]}
    calls = fake_trials(monkeypatch, speeds)
    result = tune_mod.tune(None, BASE, False, 2000, tmp_path, 3600, 600, lambda line: None)
    assert calls[:4] == ["profile", "max_num_seqs 128", "max_num_seqs 256", "max_num_seqs 512"]
    assert result.best.name == "max_num_seqs 256" and result.gain == pytest.approx(1.21)


def test_the_next_step_keeps_direction_and_graph_cover():
    base = {"max_num_seqs": 512, "max_num_batched_tokens": 32768}
    more = TrialResult("max_num_seqs 1024", {"engine.max_num_seqs": 1024,
                                             "engine.extra.compilation_config.max_cudagraph_capture_size": 1024})
    assert tune_mod.further(more, base, gpu=True, rows=4096) == ("max_num_seqs 2048", {
        "engine.max_num_seqs": 2048, "engine.extra.compilation_config.max_cudagraph_capture_size": 2048})
    fewer = TrialResult("max_num_batched_tokens 16384", {"engine.max_num_batched_tokens": 16384})
    assert tune_mod.further(fewer, base, gpu=True, rows=2000) == ("max_num_batched_tokens 8192",
                                                       {"engine.max_num_batched_tokens": 8192})
    assert tune_mod.further(TrialResult("kv cache fp8", {"model.kv_cache_dtype": "fp8"}), base, True, 2000) is None
    assert tune_mod.further(TrialResult("max_num_seqs 1", {"engine.max_num_seqs": 1}), {"max_num_seqs": 2}, False, 2000) is None
    # a sample judges a setting only if it runs two engine-fulls of it: 4,096 sequences need 8,192 rows
    all_rows = TrialResult("max_num_seqs 2048", {"engine.max_num_seqs": 2048})
    assert tune_mod.further(all_rows, base, gpu=True, rows=8191) is None
    assert tune_mod.further(all_rows, base, gpu=True, rows=8192)[0] == "max_num_seqs 4096"


def test_a_grid_point_the_sample_cannot_judge_is_skipped_and_said(monkeypatch, tmp_path):
    """The datatrove-like job's 3,000 rows judge 1,024 sequences, not 4,096 (issue 24)."""
    base = {"max_num_seqs": 2048, "max_num_batched_tokens": 32768}
    calls = fake_trials(monkeypatch, {"profile": [100, 100], "max_num_seqs 1024": [90]})
    said: list[str] = []
    tune_mod.tune(None, base, False, 3000, tmp_path, 3600, 600, said.append, ("max_num_seqs",))
    assert calls == ["profile", "max_num_seqs 1024"]
    assert any(line.startswith("skipped max_num_seqs 4096: a trial of it needs 8,192 rows") for line in said)


def test_an_fp8_kv_cache_that_holds_more_sequences_is_tried_first_with_them():
    base = {"max_num_seqs": 464, "max_num_batched_tokens": 32768}
    fp8 = {"model.kv_cache_dtype": "fp8", "engine.max_num_seqs": 928,
           "engine.extra.compilation_config.max_cudagraph_capture_size": 928}
    assert tune_mod.knobs(base, gpu=True, fp8=fp8)[0] == ("kv cache fp8", fp8)
    same = {"model.kv_cache_dtype": "fp8", "engine.max_num_seqs": 2048}  # not bound by the KV cache: third
    assert [n for n, _ in tune_mod.knobs({"max_num_seqs": 2048}, gpu=True, fp8=same)][2] == "kv cache fp8"
    assert tune_mod.knob_of(fp8) == "kv_cache_dtype"


def test_knob_limits_the_sweep_to_the_named_engine_arguments(monkeypatch, tmp_path):
    from batch_runner.cli import TUNE_KNOBS

    assert {tune_mod.knob_of(settings) for _, settings in tune_mod.knobs(BASE, gpu=True)} == set(TUNE_KNOBS)
    calls = fake_trials(monkeypatch, {"profile": [100, 100], "max_num_seqs 128": [90], "max_num_seqs 32": [95]})
    result = tune_mod.tune(None, BASE, True, 2000, tmp_path, 3600, 600, lambda line: None, ("max_num_seqs",))
    assert calls == ["profile", "max_num_seqs 128", "max_num_seqs 32"] and result.best is None


def test_gpu_trials_add_fp8_kv_and_ngram_speculation():
    names = [name for name, _ in tune_mod.knobs(BASE, gpu=True)]
    assert "kv cache fp8" in names and "ngram speculation" in names
    # a short budget tries the likely gains first: more sequences, larger steps, a smaller KV cache
    assert names[:3] == ["max_num_seqs 128", "max_num_batched_tokens 8192", "kv cache fp8"]


def test_more_sequences_than_vllm_graphs_by_default_are_tried_with_graphs_that_cover_them():
    more = dict(tune_mod.knobs({"max_num_seqs": 512, "max_num_batched_tokens": 32768}, gpu=True))["max_num_seqs 1024"]
    assert more == {"engine.max_num_seqs": 1024, "engine.extra.compilation_config.max_cudagraph_capture_size": 1024}
    assert dict(tune_mod.knobs(BASE, gpu=True))["max_num_seqs 128"] == {"engine.max_num_seqs": 128}  # within 512
    cpu = dict(tune_mod.knobs({"max_num_seqs": 512}, gpu=False))["max_num_seqs 1024"]  # no graphs on the CPU
    assert cpu == {"engine.max_num_seqs": 1024}
    profile = TrialResult("profile", {}, requests=1, output_tok_s=100)
    trials = [profile, TrialResult("max_num_seqs 1024", more, requests=1, output_tok_s=120),
              TrialResult("max_num_batched_tokens 65536", {"engine.max_num_batched_tokens": 65536}, requests=1,
                          output_tok_s=110)]
    assert tune_mod.combined(trials, profile) == {**more, "engine.max_num_batched_tokens": 65536}


def test_a_trial_sets_a_nested_engine_argument(tmp_path):
    from batch_runner.config import JobSpec
    from batch_runner.plan.trials import trial_job

    job = JobSpec.model_validate({"name": "t", "model": {"name": "m"}, "input": {"path": "in.jsonl"}, "prompt": {"template": "{{ t }}"},
                                  "engine": {"extra": {"compilation_config": {"mode": 3}}}})
    key = "engine.extra.compilation_config.max_cudagraph_capture_size"
    got = trial_job(job, 10, {"engine.max_num_seqs": 1024, key: 1024}, tmp_path)
    assert got.engine.extra["compilation_config"] == {"mode": 3, "max_cudagraph_capture_size": 1024}
    assert got.engine.max_num_seqs == 1024 and got.input.limit == 10
    assert "kv cache fp8" not in [name for name, _ in tune_mod.knobs(BASE, gpu=False)]


def test_the_estimate_scales_the_trial_by_output_tokens_and_sizes_the_array():
    tokens = InputTokens(rows=20_000, prompt_tokens=26_000_000, max_output_tokens=2_560_000,
                         sample_max_output_tokens=64_000)
    trial = TrialResult("estimate", {}, requests=500, output_tokens=64_000, generation_s=8.0, start_s=60.0,
                        output_tok_s=8000.0)
    e = estimate(tokens, trial, devices=1, price=2.0, tasks=None, time_limit_h=0.05)
    assert e.generation_h == pytest.approx(8.0 * 40 / 3600)  # 40 times the trial's output
    assert e.gpu_hours == pytest.approx(e.generation_h)
    assert e.tasks == 4  # 320 s of generation in tasks of at most 0.05 h / 1.25 less a 60 s start
    assert e.gpu_hours_with_starts == pytest.approx(e.generation_h + 4 * 60 / 3600)
    assert e.cost() == pytest.approx(2.0 * e.gpu_hours_with_starts)
    text = report(e, trial, gpu=True)
    assert "sbatch --array=0-3 --time=00:05:00" in text and "fits" in text
    assert "rows per hour per GPU: 225,000" in text
    assert "runs of one job vary" in text and "allows 25% over" in text  # a figure, not a promise
    one = report(estimate(tokens, trial, devices=1, price=None, tasks=1), trial, gpu=True)
    assert "Slurm: 1 task of about" in one


def test_a_one_wave_trial_is_called_out():
    assert wave_note(500, 512, 20_000).startswith("note: the trial's 500 rows are fewer than twice max_num_seqs (512)")
    assert "--rows 1,024 or more" in wave_note(500, 512, 20_000)
    assert wave_note(1024, 512, 20_000) is None
    assert wave_note(300, 512, 300) is None  # the trial was the whole input


def test_slurm_time_limits_are_read_as_slurm_writes_them():
    assert [_hours(t) for t in ("90", "10:30", "04:00:00", "1-00:00:00", "2-12")] == [1.5, 0.175, 4.0, 24.0, 60.0]


@pytest.mark.parametrize("bad", ["25:99", "00:00:00", "0", "1-24", "1-23:60", "10:61:00", "-5", "UNLIMITED", "4h",
                                 "99999999999:00", "400-00", ""])
def test_a_bad_time_limit_is_refused_before_any_trial(cli, tmp_path, monkeypatch, bad):
    def no_trial(*a, **kw):
        raise AssertionError("a trial started before --time was checked")
    monkeypatch.setattr("batch_runner.plan.trials.run_trial", no_trial)
    result = cli("estimate", write_job(tmp_path), "--time", bad)
    assert result.exit_code == 2 and f"--time {bad!r}" in result.output, result.output
    with pytest.raises(JobError):
        _hours(bad)


def test_a_tuned_file_that_is_not_tunes_is_refused(cli, tmp_path):
    for text in ("not json", "{}", '{"best": null, "trials": []}', '{"best": {"nope": 1}}'):
        (tmp_path / "tune.json").write_text(text)
        result = cli("estimate", write_job(tmp_path), "--tuned", tmp_path / "tune.json")
        assert result.exit_code == 2 and "not a tune.json written by `batch-run tune`" in result.output, text


def test_cost_figures_of_a_run(cli, fake, tmp_path):
    fake()
    metrics = tmp_path / "metrics"
    job = write_job(tmp_path, output={"gpu_hour_price": 3.0, "metrics_dir": str(metrics)})
    result = cli("run", job, "--limit", "8")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    c = summary["cost"]
    assert c["devices"] == 1 and c["price"] == 3.0
    # duration_s is kept to 0.01 s, and this run is a fraction of a second: compare in seconds
    assert c["gpu_hours"] * 3600 == pytest.approx(summary["duration_s"], abs=0.006)
    assert c["gpu_hours_generating"] < c["gpu_hours"]
    assert c["cost"] == pytest.approx(c["gpu_hours"] * 3.0, rel=1e-3)
    run = summary["this_run"]
    assert c["cost_per_m_output_tokens"] == pytest.approx(c["cost"] / (run["output_tokens"] / 1e6), rel=1e-3)
    assert "GPU-hours" in result.output and "cost" in result.output
    prom = next(metrics.glob("*.prom")).read_text()
    assert "batch_run_gpu_hours{" in prom and "batch_run_cost{" in prom


def test_the_closing_table_shows_gpu_hours_only_with_a_price(cli, fake, tmp_path):
    fake()
    result = cli("run", write_job(tmp_path), "--limit", "4")
    assert result.exit_code == 0, result.output
    assert "GPU-hours" not in result.output and "per GPU-hour" not in result.output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["cost"]["gpu_hours"] > 0  # still recorded


def test_cost_without_a_price_has_hours_only():
    c = cost_of(3600, 1800, 2, 1000, 5000, None)
    assert (c.gpu_hours, c.gpu_hours_generating, c.cost, c.cost_per_m_output_tokens) == (2.0, 1.0, None, None)


def test_trial_folders_are_named_in_portable_characters():
    assert folder_name("profile (re-run)") == "profile_re-run"
    assert folder_name("max_num_seqs 1024 (re-run)") == "max_num_seqs_1024_re-run"
    assert folder_name("speculative_config {'method': 'ngram'}") == "speculative_config_method_ngram"
    assert folder_name("kv_cache_dtype fp8.e4m3") == "kv_cache_dtype_fp8.e4m3"
