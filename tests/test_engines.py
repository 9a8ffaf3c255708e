"""The engines package without an engine start: the backend setting, the fake engine it chooses,
the bound on vLLM's sampling-parameter cache, and the reaper of orphaned engine processes."""

import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict

import pytest
from conftest import ROOT, SUMMARIZE

from batch_runner import engines
from batch_runner.config import load_job
from batch_runner.engines import fake, reaper, vllm_engine
from batch_runner.errors import JobError, RowError
from batch_runner.inputs.assignment import ALL
from batch_runner.inputs.digest import InputContent
from batch_runner.output.resume import fingerprint, fingerprint_hash

# summarize.yaml's fingerprint (its input's content left out: that holds absolute paths), as
# batch-run computed it before engine.backend existed (commit a6ab6a8)
SUMMARIZE_FINGERPRINT = "99bd0986a8b0687c"


@pytest.mark.parametrize("sets", [[], ["engine.backend=vllm"]], ids=["unset", "vllm"])
def test_the_backend_setting_leaves_an_existing_outputs_fingerprint_as_it_was(sets):
    job = load_job(SUMMARIZE, sets)
    assert fingerprint_hash(fingerprint(job, ALL, None, InputContent([]))) == SUMMARIZE_FINGERPRINT


def test_a_fake_engines_answers_are_never_resumed_as_the_real_ones():
    """The fake's canned rows in the job's default output must not count as done for a real run."""
    job = load_job(SUMMARIZE, ["engine.backend=fake"])
    assert fingerprint_hash(fingerprint(job, ALL, None, InputContent([]))) != SUMMARIZE_FINGERPRINT


def test_the_default_backend_is_vllm_and_another_is_refused():
    assert load_job(SUMMARIZE).engine.backend == "vllm"
    with pytest.raises(JobError, match="engine.backend"):
        load_job(SUMMARIZE, ["engine.backend=tgi"])


def test_the_fake_takes_its_settings_from_engine_extra():
    job = load_job(SUMMARIZE, ["engine.backend=fake", "engine.extra.per_poll=7", "engine.max_num_seqs=2"])
    args, dropped = engines.engine_arguments("model-dir", job.model, job.engine)
    assert args == {"model": "model-dir", "max_num_seqs": 2, "per_poll": 7} and dropped == []
    engine = engines.get_engine(args, "fake")
    try:
        assert isinstance(engine, fake.FakeEngine) and engine.per_poll == 7
        assert engine in engines.running_engines()
        engines.reset_prefix_caches()  # nothing cached; must not fail
    finally:
        engines.shutdown_engines("fake")  # a vLLM engine the session shares runs on
    assert engine not in engines.running_engines()


def test_a_setting_the_fake_lacks_is_refused_in_the_preflight():
    job = load_job(SUMMARIZE, ["engine.backend=fake", "engine.extra.max_num_seqs=4"])
    with pytest.raises(JobError, match="engine.extra.max_num_seqs: not a setting of the fake engine"):
        engines.engine_arguments("model-dir", job.model, job.engine)


def test_a_fake_start_that_fails_reads_as_vllms():
    with pytest.raises(Exception, match="vLLM could not start the engine with these settings"):
        engines.get_engine({"model": "m", "max_num_seqs": 4, "fail_start": "max_num_seqs too large"}, "fake")


def test_the_sampling_parameter_cache_keeps_the_most_recently_used(monkeypatch):
    built = []
    monkeypatch.setattr(vllm_engine, "sampling_params", lambda values: built.append(values) or dict(values))
    cache: OrderedDict = OrderedDict()
    for seed in range(5):
        vllm_engine.cached_params(cache, {"seed": seed}, size=3)
    assert len(cache) == 3 and len(built) == 5
    vllm_engine.cached_params(cache, {"seed": 2}, size=3)  # kept: not built again, now the newest
    assert len(built) == 5
    vllm_engine.cached_params(cache, {"seed": 0}, size=3)  # dropped before: built again; evicts seed 3
    assert len(built) == 6 and [k for k in cache] == ['{"seed": 4}', '{"seed": 2}', '{"seed": 0}']
    assert vllm_engine.PARAMS_CACHE_SIZE <= 10_000


def test_sampling_values_vllm_refuses_are_a_row_error(monkeypatch):
    def refuse(values):
        raise ValueError("temperature must be non-negative")
    monkeypatch.setattr(vllm_engine, "sampling_params", refuse)
    with pytest.raises(RowError, match="temperature"):
        vllm_engine.cached_params(OrderedDict(), {"temperature": -1})


PARENT = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from batch_runner.engines import reaper
reaper.guard()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the reaper works on Linux only")
def test_the_reaper_ends_what_a_killed_process_started():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(ROOT)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    started = reaper.started_at(child)
    assert started is not None and child in reaper.descendants(parent.pid)
    time.sleep(6 * reaper.SCAN_S)  # the watcher (a Python process importing psutil) has started and seen the child
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while reaper.started_at(child) == started and time.time() < deadline:
        time.sleep(0.2)
    assert reaper.started_at(child) != started, "the child outlived its killed parent"
