"""Property tests: random rows of mixed and extreme types through pre-flight, rendering and commit.

Limited and full runs over the same output (with the fake engine: the runner's own logic is under
test), and whatever the data, the output reads in pandas, pyarrow.dataset and duckdb, `merge`
succeeds, and every id is there exactly once.
"""

import json
import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
from click.testing import CliRunner
from conftest import write_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch_runner.cli import main
from batch_runner.output.schemas import RESULT_NAMES

NAMES = ["self", "class", "None", "True", "loop", "range", "items", "__class__", "lambda", "x y", "naïve", "日本",
         "n", "v"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.just(""),
    st.just("\ud800 lone surrogate"))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                              max_size=3), max_leaves=6)
rows_strategy = st.lists(st.dictionaries(st.sampled_from(NAMES), values, max_size=4), min_size=1, max_size=10)
texts = st.one_of(st.text(max_size=40), st.just("\ud800"), st.just(""))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extras=rows_strategy, texts=st.lists(texts, min_size=10, max_size=10), limit=st.integers(1, 10))
def test_any_rows_give_a_readable_output_with_every_id_once(extras, texts, limit):
    rows = [{"id": f"r{i}", "text": texts[i], **extra} for i, extra in enumerate(extras)]
    kept = sorted({k for r in rows for k in r} - RESULT_NAMES - {"text"})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        job = write_job(tmp, input={"path": str(tmp / "in.jsonl"), "keep_columns": kept},
                        prompt={"template": "{{ text }}"}, output={"batch_size": 3},
                        engine={"backend": "fake", "extra": {"per_poll": 4}})
        for args in (["--limit", limit], []):
            result = run("run", job, *args)
            assert result.exit_code in (0, 3), result.output
        out = tmp / "out"
        df = pd.read_parquet(out / "results")
        assert sorted(df["id"]) == sorted(r["id"] for r in rows) and df["id"].is_unique
        assert ds.dataset(out / "results").to_table().num_rows == len(rows)
        assert duckdb.sql(f"select count(distinct id) from '{out}/results/*.parquet'").fetchall()[0][0] == len(rows)
        merged = run("merge", out)
        assert merged.exit_code == 0, merged.output
        assert len(pd.read_parquet(out / "merged" / "results.parquet")) == len(rows)
