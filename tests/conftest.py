"""Shared fixtures: job files written per test, the CLI in-process and as a real subprocess.

In-process CLI runs share one vLLM engine (batch_runner.engine keeps it for the process), so the
engine starts once for the whole session, and tests that need other engine settings (marker
own_engine) run after all the others; subprocess runs are kept few because each starts its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from batch_runner.cli import main

ROOT = Path(__file__).resolve().parent.parent
SUMMARIZE = ROOT / "jobs" / "summarize.yaml"

# The tests' engines (in this process, in subprocesses and their workers, which inherit it) take a
# 1 GiB KV cache instead of the CPU default's quarter of RAM (3.4 GiB here): creating that one took
# about 8 of each engine start's 30 s on 2 cores, and no test needs more than 46,000 tokens of cache.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session", autouse=True)
def _the_shared_engine_ends_with_the_session():
    """Shut the in-process engine down while pytest's streams are open: left to the interpreter's
    exit, vLLM's shutdown logged into closed streams ("--- Logging error ---") after the summary."""
    yield
    from batch_runner.engines import shutdown_engines

    shutdown_engines()


# Sections every job a test writes starts from (the ``fake`` fixture sets engine.backend here)
JOB_DEFAULTS: dict[str, dict] = {}


def base_job(tmp_path: Path, **sections) -> dict:
    """The summarize job, pointed into tmp_path, with sections updated from JOB_DEFAULTS, then from
    keyword arguments."""
    job = yaml.safe_load(SUMMARIZE.read_text())
    job["input"]["path"] = str(ROOT / "inputs" / "news.jsonl")
    job["output"]["dir"] = str(tmp_path / "out")
    for name, values in [*JOB_DEFAULTS.items(), *sections.items()]:
        job.setdefault(name, {}).update(values)
    return job


def write_job(tmp_path: Path, name: str = "job.yaml", **sections) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(base_job(tmp_path, **sections), sort_keys=False))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def last_row_key(rows: int, batch_size: int) -> str:
    """The ending (":batch:position") of the request key of a run's last row, for the fake engine's
    ``hold``: a held last row keeps the run mid-way until a test's signal comes, however late."""
    return f":{(rows - 1) // batch_size}:{(rows - 1) % batch_size}"


def news_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (ROOT / "inputs" / "news.jsonl").read_text().splitlines()]
    return rows[:n]


def pytest_collection_modifyitems(config, items):
    """Tests marked own_engine run last. The in-process tests share one engine (batch_runner.engine
    keeps one per process, for the same arguments), and a test with engine settings of its own in
    between would make the next test restart it (about 30 s each on 2 cores)."""
    items.sort(key=lambda item: item.get_closest_marker("own_engine") is not None)  # a stable sort


FAKE = {"backend": "fake"}  # the job setting that chooses the fake engine (batch_runner/engines/fake.py)


@pytest.fixture
def fake(monkeypatch):
    """The jobs this test writes choose the fake engine (``engine.backend: fake``). Calling the
    fixture builds a FakeEngine with these settings and hooks, which the next in-process runs use
    (``engines.fake.install``), and returns it, to count what it was sent."""
    from batch_runner.engines import fake as fake_backend

    monkeypatch.setitem(JOB_DEFAULTS, "engine", FAKE)

    def install(**kw) -> fake_backend.FakeEngine:
        engine = fake_backend.FakeEngine(**kw)
        fake_backend.install(engine)
        return engine
    yield install
    fake_backend.install(None)


@pytest.fixture
def cli():
    """Run ``batch-run ARGS`` in this process; returns the click Result."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def batch_run_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "batch_runner.cli", *map(str, args)]


def fake_job(job: Path, **settings) -> Path:
    """A copy of ``job`` beside it that chooses the fake engine, with these settings (engine.extra)."""
    data = yaml.safe_load(job.read_text())
    data.setdefault("engine", {}).update(backend="fake", extra=settings)
    path = job.with_name(f"fake-{job.name}")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_batch_run(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(batch_run_cmd(*args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
