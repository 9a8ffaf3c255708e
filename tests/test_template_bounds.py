"""A row's templates are bounded in time, size and memory, and a stop ends a long render (issue 25, item 2).

Each run is a process of its own (the CLI with the fake engine) with its address space capped and
a timeout: before the bounds, these templates took gigabytes and minutes, and must fail the test,
not the machine.
"""

import os
import resource
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, fake_job, news_rows, write_job, write_jsonl

CAP = 6 << 30  # address space of a run: a runaway render fails it, not the machine (pyarrow needs room for threads)

# One of each way a template can run away: output, time, a single huge value, captured output.
BOMBS = {
    "prints": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "silent": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "repeat": "{{ 'x' * 10**10 }}",
    "power": "{{ 10 ** (10 ** 10) }}",
    "format": "{{ '%9999999999s' % 'x' }}",
    "width": "{{ text|center(10**10) }}",
    "replace": "{{ (text * 300).replace('', text * 300) }}",
    "captured": "{% filter length %}{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
                "{% endfor %}{% endfilter %}",
    "doubling": "{% with ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                "{% endwith %}",
}


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


FAKE_RUN = [sys.executable, "-m", "batch_runner.cli", "run"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}  # this checkout's batch_runner


def run_capped(job) -> subprocess.CompletedProcess:
    return subprocess.run([*FAKE_RUN, str(fake_job(job))], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=150, preexec_fn=capped)


def bomb_rows(tmp_path, kinds) -> tuple:
    rows = news_rows(len(kinds) + 3)
    for r, kind in zip(rows, [None, *kinds, None, None]):
        r["kind"] = kind or "good"
    return write_jsonl(tmp_path / "in.jsonl", rows), rows


def branches(field: str) -> str:
    return "".join(f"{{% elif {field} == '{k}' %}}{t}" for k, t in BOMBS.items()).replace("{% elif", "{% if", 1) \
        + "{% endif %}"


@pytest.mark.parametrize("where", ["template", "chat_template"])
def test_a_row_whose_template_runs_away_is_an_error_row_and_the_job_goes_on(tmp_path, where):
    path, rows = bomb_rows(tmp_path, list(BOMBS))
    if where == "template":
        prompt = {"template": "{{ text }}" + branches("kind")}
    else:  # the job's own chat template; the row's kind is the end of its user message
        prompt = {"template": "{{ text }} {{ kind }}",
                  "chat_template": "{% set kind = messages[-1].content.split(' ')[-1] %}{% set text = 'abc' %}"
                                   "{% for m in messages %}{{ m.content }}{% endfor %}" + branches("kind")}
    job = write_job(tmp_path, input={"path": str(path), "keep_columns": ["kind"]},
                    prompt={**prompt, "render_timeout_s": 1, "max_render_chars": 100_000},
                    output={"batch_size": 4})
    done = run_capped(job)
    assert done.returncode == 3, done.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "out" / "results").set_index("id")
    assert sorted(df.index) == sorted(r["id"] for r in rows)  # every row has its result
    bad = df[df["kind"] != "good"]
    assert sorted(bad["kind"]) == sorted(BOMBS) and set(bad["error_code"]) == {"template_error"}
    assert bad["error"].str.contains("prompt.render_timeout_s|prompt.max_render_chars").all(), bad["error"]
    good = df[df["kind"] == "good"]
    assert len(good) == 3 and good["error_code"].isna().all() and good["output"].str.startswith("answer to").all()


def test_a_stop_ends_a_long_render_within_seconds(tmp_path):
    path, rows = bomb_rows(tmp_path, ["good", "good", "good", "good", "good", "silent"])
    job = write_job(tmp_path, input={"path": str(path)}, engine={"max_num_seqs": 1},
                    prompt={"template": "{{ text }}{% if kind == 'silent' %}" + BOMBS["silent"] + "{% endif %}",
                            "render_timeout_s": 3600},
                    output={"batch_size": 1})
    proc = subprocess.Popen([*FAKE_RUN, str(fake_job(job, per_poll=3))], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=capped)
    try:
        deadline = time.time() + 120
        while len(list((tmp_path / "out" / "results").glob("part-*.parquet"))) < 3:  # the silent row renders next
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("no 3 parts:\n" + proc.communicate()[1][-3000:])
            time.sleep(0.05)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=55)  # the engine's stop grace is 60 s: the render must end first
    finally:
        proc.kill()
    assert proc.returncode == 75, err[-3000:]
    assert time.monotonic() - sent < 55
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert df["error_code"].isna().all()  # the stopped row is no error row: it runs again on resume
    assert rows[6]["id"] not in set(df["id"])


def test_everyday_templates_render_as_before_under_the_bounds():
    """The bounds refuse only what would pass them: widths, formats, joins and loops of normal size render."""
    from batch_runner.config import PromptSpec
    from batch_runner.errors import RowError
    from batch_runner.inputs.prompts import PromptRenderer

    template = ("{{ '%5.2f' % price }}|{{ '{:>6}'.format(name) }}|{{ name|center(9) }}|{{ tags|join(', ') }}|"
                "{{ text|replace('a', 'b') }}|{{ tags|tojson }}|{% for i in range(3) %}{{ i }}{% endfor %}|"
                "{{ (name * 3)|length }}|{{ 2 ** 10 }}|{{ text.upper() }}")
    row = {"price": 3.14159, "name": "ann", "tags": ["x", "y"], "text": "abc"}
    expected = ' 3.14|   ann|   ann   |x, y|bbc|["x", "y"]|012|9|1024|ABC'
    renderer = PromptRenderer(PromptSpec(template=template, max_render_chars=60), None, 2048, 64)
    assert renderer.user_text(row) == expected
    small = PromptRenderer(PromptSpec(template=template, max_render_chars=len(expected) - 1), None, 2048, 64)
    with pytest.raises(RowError, match="prompt.max_render_chars"):
        small.user_text(row)


@pytest.mark.parametrize("template, message", [
    ("{{ 1 / n }}", "ZeroDivisionError"),
    ("{{ text + n }}", "TypeError"),
    ("{% macro f(k) %}{{ f(k + 1) }}{% endmacro %}{{ f(n) }}", "RecursionError"),
    ("{% for i in range(10 ** 10) %}{% endfor %}", "Range too big"),  # the sandbox's own bound on range
])
def test_a_template_that_fails_on_a_row_is_that_rows_error_not_the_runs(template, message):
    from batch_runner.config import PromptSpec
    from batch_runner.errors import RowError
    from batch_runner.inputs.prompts import PromptRenderer

    renderer = PromptRenderer(PromptSpec(template=template), None, 2048, 64)
    with pytest.raises(RowError, match=message) as e:
        renderer.user_text({"n": 0, "text": "abc"})
    assert e.value.code == "template_error" and len(e.value.message) < 600
