"""The Python API: a job on a path, a pandas frame or a datasets.Dataset, results as a datasets.Dataset."""

import json
import logging

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SUMMARIZE, news_rows

import batch_runner
from batch_runner.engines.fake import batch_of
from batch_runner.errors import BatchRunnerError

FAKE = ["engine.backend=fake"]  # the fake engine (batch_runner/engines/fake.py), for the API's own logic


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(news_rows(n))


def test_a_frame_gives_its_results_in_input_order_and_resumes(fake, tmp_path):
    data = frame(30)
    engine = fake(per_poll=7)  # finishes out of order across batches
    got = batch_runner.run(SUMMARIZE, data, output_dir=tmp_path / "out", progress=False, overrides=FAKE)
    assert isinstance(got, datasets.Dataset)
    assert got["id"] == list(data["id"])  # one row per input row, in input order
    assert all(text.startswith("answer to ") for text in got["output"])
    assert len(engine.submitted) == 30

    again = fake()
    resumed = batch_runner.run(SUMMARIZE, data, output_dir=tmp_path / "out", progress=False,
                               overrides=FAKE)
    assert again.submitted == [] and resumed["id"] == got["id"]  # the same data is the same input


def test_a_dataset_and_a_path_are_inputs_too(fake, tmp_path):
    fake()
    ds = datasets.Dataset.from_pandas(frame(12), preserve_index=False)
    got = batch_runner.run(SUMMARIZE, ds, output_dir=tmp_path / "a", progress=False, overrides=FAKE)
    assert got["id"] == ds["id"]
    path = tmp_path / "rows.parquet"
    frame(5).to_parquet(path)
    got = batch_runner.run(SUMMARIZE, path, output_dir=tmp_path / "b", progress=False, overrides=FAKE)
    assert got["id"] == list(frame(5)["id"])


def test_a_run_that_ends_with_rows_left_raises_after_saving_what_finished(fake, tmp_path):
    fake(stall=lambda key: batch_of(key) == 0)  # the first batch never finishes; then the engine dies
    with pytest.raises(BatchRunnerError):  # (no restart: the failure ends the run)
        batch_runner.run(SUMMARIZE, frame(20), output_dir=tmp_path / "out", progress=False,
                         overrides=[*FAKE, "output.batch_size=4", "engine.max_restarts=0"])
    assert len(pd.read_parquet(tmp_path / "out" / "results")) == 16


def test_data_that_is_not_a_table_is_refused(tmp_path):
    with pytest.raises(BatchRunnerError, match="pandas.DataFrame or a datasets.Dataset"):
        batch_runner.run(SUMMARIZE, [1, 2, 3], output_dir=tmp_path / "out", progress=False)


@pytest.mark.engine
def test_the_real_engine_through_the_api(tmp_path):
    got = batch_runner.run(SUMMARIZE, frame(6), output_dir=tmp_path / "out", progress=False,
                           overrides=["sampling.max_tokens=8"])
    assert got["id"] == list(frame(6)["id"])
    assert all(got["output"]) and set(got["finish_reason"]) <= {"stop", "length"}


@pytest.mark.parametrize("values", [[3, "c1"], ["c0", 3], [2**64, 5], [1.5, "x"], [True, {"k": [1]}]],
                         ids=["int-then-str", "str-then-int", "past-64-bits", "float-and-str", "bool-and-dict"])
def test_a_frame_column_of_mixed_kinds_is_stored_as_text_as_the_cli_does(fake, tmp_path, caplog, monkeypatch,
                                                                         values):
    # the CLI, run earlier in this process by other tests, stops batch_runner's messages propagating to
    # the root logger, where caplog listens
    monkeypatch.setattr(logging.getLogger("batch_runner"), "propagate", True)
    data = frame(6)
    data["code"] = pd.Series([values[i % 2] for i in range(6)], dtype=object)
    fake()
    got = batch_runner.run(SUMMARIZE, data, output_dir=tmp_path / "out", progress=False,
                           overrides=[*FAKE, "input.keep_columns=[code]"])
    assert got["id"] == list(data["id"]) and got["error_code"] == [None] * 6
    as_text = [v if isinstance(v, str) else json.dumps(v) for v in values]
    assert got["code"] == [as_text[i % 2] for i in range(6)]
    assert pq.read_schema(next((tmp_path / "out" / "results").glob("part-*.parquet"))).field("code").type == "string"
    assert "column 'code' holds" in caplog.text and "stored as text" in caplog.text
