"""Every output stays readable and complete, whatever the data and whatever the operator does.

Regression tests of issue 11, through the CLI in-process. Generation is the fake engine's (the
runner's own logic is under test here); test_end_to_end covers the same contract with vLLM.
"""

import bz2
import gzip
import json
import os
import subprocess
import threading

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml
from conftest import news_rows, write_job, write_jsonl

from batch_runner.config import load_job
from batch_runner.engines.fake import batch_of
from batch_runner.errors import JobError
from batch_runner.output.resume import OutputLock


def read_everywhere(out) -> pd.DataFrame:
    """Read the results as users do: pandas, pyarrow.dataset and duckdb must agree."""
    df = pd.read_parquet(out / "results")
    assert ds.dataset(out / "results").to_table().num_rows == len(df)
    assert duckdb.sql(f"select count(*) from '{out}/results/*.parquet'").fetchall()[0][0] == len(df)
    return df


def mixed_rows(n: int, switch: int) -> list[dict]:
    rows = news_rows(n)
    for i, r in enumerate(rows):
        r["code"] = i if i < switch else f"c{i}"
    return rows


# 1. kept-column types are decided from the whole input, before any limited run
def test_kept_types_do_not_drift_between_a_limited_and_a_full_run(cli, fake, tmp_path):
    fake()
    path = write_jsonl(tmp_path / "in.jsonl", mixed_rows(30, 20))
    job = write_job(tmp_path, input={"path": str(path), "keep_columns": ["title", "code"]},
                    output={"batch_size": 8})
    first = cli("run", job, "--limit", "20")
    assert first.exit_code == 0, first.output
    assert "column 'code' holds int and str values; it is stored as text" in first.output
    status = cli("status", tmp_path / "out")
    assert "partial" in status.output and status.exit_code == 1  # 20 of 30 rows is not complete
    second = cli("run", job)
    assert second.exit_code == 0, second.output
    df = read_everywhere(tmp_path / "out")
    assert sorted(df["id"]) == sorted(r["id"] for r in news_rows(30)) and df["id"].is_unique
    assert df.set_index("id").loc["news-0003", "code"] == "3"
    assert cli("merge", tmp_path / "out").exit_code == 0
    assert cli("status", tmp_path / "out").exit_code == 0


# 2. a value that does not fit its type never fails a write
def test_values_past_64_bits_and_unstorable_text_never_fail_a_commit(cli, fake, tmp_path):
    fake()
    rows = news_rows(6)
    rows[0]["big"], rows[1]["big"] = 2**64, 5
    rows[2]["big"] = -(2**70)
    lines = [json.dumps(r) for r in rows]
    lines[3] = lines[3][:-1] + ', "big": "\\ud800 lone surrogate"}'  # valid JSON, not storable text
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    job = write_job(tmp_path, input={"path": str(tmp_path / "in.jsonl"), "keep_columns": ["big"]})
    result = cli("run", job)
    assert result.exit_code == 3, result.output  # one error row, every row written
    df = read_everywhere(tmp_path / "out").set_index("id")
    assert len(df) == 6
    assert df.loc["news-0000", "big"] == str(2**64) and df.loc["news-0001", "big"] == "5"
    bad = df.loc["news-0003"]
    assert bad["error_code"] == "unstorable_value" and "column 'big'" in bad["error"]
    assert bad["output"].startswith("answer to")  # the generated answer is kept
    assert df["error_code"].notna().sum() == 1


def test_a_prompt_problem_in_a_kept_column_is_reported_and_no_error_text_fails_a_write(cli, fake, tmp_path):
    fake()
    rows = news_rows(6)
    for r in rows:
        r["code"] = ""
    lines = [json.dumps(r) for r in rows]
    lines[2] = lines[2].replace('"title": "', '"title": "\\udc80', 1)  # kept and used by the template
    lines[4] = lines[4].replace('"code": ""', '"code": "\\ud800!"')  # quoted by the chat template's error
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    chat = ("{% for m in messages %}{% if m.content.endswith('!') %}{{ raise_exception('bad ' + m.content[-2:]) }}"
            "{% endif %}{{ m.content }}{% endfor %}")
    job = write_job(tmp_path, input={"path": str(tmp_path / "in.jsonl"), "keep_columns": ["title"]},
                    prompt={"template": "{{ title }} {{ text }}{{ code }}", "chat_template": chat})
    result = cli("run", job)
    assert result.exit_code == 3, result.output
    df = read_everywhere(tmp_path / "out").set_index("id")
    assert len(df) == 6 and df["error_code"].notna().sum() == 2
    bad = df.loc["news-0002"]
    assert bad["error_code"] == "invalid_value" and "not valid Unicode" in bad["error"]  # the prompt problem
    assert "column 'title'" in bad["error"] and pd.isna(bad["title"]) and pd.isna(bad["output"])  # never ran
    quoted = df.loc["news-0004"]
    assert quoted["error_code"] == "template_error" and "bad \\ud800!" in quoted["error"]  # escaped, not lost


# 3. result column names are reserved
@pytest.mark.parametrize("column", ["id", "output", "batch", "error"])
def test_kept_column_that_clashes_with_a_result_column_is_refused(cli, tmp_path, column):
    job = write_job(tmp_path, input={"keep_columns": [column, "title"]})
    result = cli("run", job)
    assert result.exit_code == 2
    assert f"'{column}' is the name of a result column" in result.output
    assert "keep_columns" in result.output and not (tmp_path / "out").exists()


# 4. complete means every id is committed, not that enough rows are
def test_a_smaller_limit_after_an_interrupted_run_runs_the_missing_rows(cli, fake, tmp_path):
    fake(stall=lambda key: batch_of(key) == 0)  # the first batch never finishes, then the engine dies
    job = write_job(tmp_path, output={"batch_size": 4}, engine={"backend": "fake", "max_restarts": 0})  # no restart
    crashed = cli("run", job, "--limit", "40")
    assert crashed.exit_code == 1
    assert len(pd.read_parquet(tmp_path / "out" / "results")) == 36  # rows 4..39

    engine = fake()
    result = cli("run", job, "--limit", "36")
    assert result.exit_code == 0, result.output
    assert len(engine.submitted) == 4  # exactly the four that were never answered
    df = read_everywhere(tmp_path / "out")
    assert set(r["id"] for r in news_rows(36)) <= set(df["id"]) and df["id"].is_unique
    assert not (tmp_path / "out" / "shards" / "0000-of-0001.done").exists()  # 40 of 240 rows


# 5. --fresh touches only what is ours, only after every check
def test_fresh_in_an_array_moves_only_its_own_shard(cli, fake, tmp_path):
    fake()
    job = write_job(tmp_path)
    for i in (0, 1):
        assert cli("run", job, "--limit", "12", "--shard", f"{i}/2").exit_code == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")
    own_parts = lambda label: sorted((tmp_path / "out" / "results").glob(f"part-{label}-*"))  # noqa: E731
    kept = own_parts("0000-of-0002")
    assert kept and own_parts("0001-of-0002")
    with OutputLock(tmp_path / "out", "0000-of-0002"):  # shard 0 is running right now
        result = cli("run", job, "--limit", "12", "--shard", "1/2", "--fresh")
    assert result.exit_code == 0, result.output
    assert own_parts("0000-of-0002") == kept  # the other shard's results did not move
    assert (tmp_path / "out" / "notes.txt").exists() and (tmp_path / "out" / "job.json").exists()
    moved = next(tmp_path.glob("out.replaced-*"))
    assert list((moved / "results").glob("part-0001-of-0002-*")) and not (moved / "job.json").exists()


def test_fresh_with_a_changed_job_while_another_shard_runs_is_refused(cli, fake, tmp_path):
    fake()
    job = write_job(tmp_path)
    for i in (0, 1):
        assert cli("run", job, "--limit", "8", "--shard", f"{i}/2").exit_code == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with OutputLock(tmp_path / "out", "0000-of-0002"):
        result = cli("run", job, "--limit", "8", "--shard", "1/2", "--fresh", "--set", "sampling.max_tokens=9")
    assert result.exit_code == 2 and "while shards 0000-of-0002 are running" in result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_fresh_moves_nothing_when_the_run_then_fails_its_checks(cli, fake, tmp_path):
    fake()
    job = write_job(tmp_path)
    assert cli("run", job, "--limit", "4").exit_code == 0
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    bad = cli("run", job, "--limit", "4", "--fresh", "--set", f"input.path={tmp_path / 'missing.jsonl'}")
    assert bad.exit_code == 2
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before
    assert not list(tmp_path.glob("out.replaced-*"))


@pytest.mark.parametrize("where", ["--output .", "--output $PWD", "output.dir .", "input folder"])
def test_unsafe_output_folders_are_refused(cli, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    path = write_jsonl(tmp_path / "data" / "in.jsonl", news_rows(4)) \
        if (tmp_path / "data").mkdir() is None else None
    job = write_job(tmp_path, input={"path": str(path)})
    args = {"--output .": ["--output", "."], "--output $PWD": ["--output", str(tmp_path)],
            "output.dir .": ["--set", "output.dir=."], "input folder": ["--output", str(tmp_path / "data")]}[where]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("run", job, "--fresh", *args)
    assert result.exit_code == 2, result.output
    assert "output.dir:" in result.output and "give the job its own folder" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b"])
def test_job_names_that_are_not_a_folder_name_are_refused(tmp_path, name):
    with pytest.raises(JobError, match="name: use letters"):
        load_job(write_job(tmp_path, name=name) if False else _job_named(tmp_path, name))


def _job_named(tmp_path, name):
    path = write_job(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["name"] = name
    path.write_text(yaml.safe_dump(data))
    return path


# 6. prompt text is never expanded unless asked
def test_dollar_signs_in_prompt_text_are_sent_as_written(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("USD", raising=False)
    monkeypatch.setenv("BR_DIR", str(tmp_path / "o"))
    job = write_job(tmp_path, prompt={"system": "Prices in $USD; run `echo $HOME` and pay $$5."},
                    output={"dir": "${BR_DIR}/x$$y"})
    spec = load_job(job)
    assert spec.prompt.system == "Prices in $USD; run `echo $HOME` and pay $$5."
    assert str(spec.output_dir) == f"{tmp_path}/o/x$y"
    result = cli("run", job, "--dry-run", "--limit", "1")
    assert result.exit_code == 0 and "echo $HOME" in result.output


def test_prompt_expansion_when_the_job_asks(tmp_path, monkeypatch):
    monkeypatch.setenv("BR_TONE", "formal")
    job = write_job(tmp_path, prompt={"system": "Be ${BR_TONE}; costs $$3.", "expand_env": True})
    assert load_job(job).prompt.system == "Be formal; costs $3."


# 7. a repeated key is an error, not a silent override
def test_a_repeated_yaml_key_is_an_error_naming_both_lines(tmp_path):
    path = write_job(tmp_path)
    path.write_text(path.read_text() + "sampling:\n  temperature: 0.5\n")
    with pytest.raises(JobError) as e:
        load_job(path)
    assert "key 'sampling' is given twice (first at line" in str(e.value)


# 8. any column name renders
def test_columns_named_like_python_and_jinja_words(cli, fake, tmp_path):
    fake()
    rows = news_rows(3)
    for r in rows:
        r.update({"self": 1, "loop": [1], "class": None, "None": "x", "__class__": "y"})
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", rows)),
                                     "keep_columns": ["self", "loop"]})
    dry = cli("run", job, "--dry-run")
    assert dry.exit_code == 0, dry.output
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    assert len(read_everywhere(tmp_path / "out")) == 3


# 9. input decoding
def _dry(cli, tmp_path, path, **input_):
    return cli("run", write_job(tmp_path, input={"path": str(path), **input_}), "--dry-run")


def test_a_bad_byte_is_named_at_its_line_wherever_it_is(cli, tmp_path):
    for line in (1, 300):
        lines = [json.dumps({**r, "id": f"{r['id']}-{k}"}).encode() for k in range(2) for r in news_rows(240)]
        lines[line - 1] = lines[line - 1].replace(b'"title": "', b'"title": "\xe9', 1)
        path = tmp_path / f"latin1-{line}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        result = _dry(cli, tmp_path, path)
        assert result.exit_code == 2
        assert f"{path}, line {line}: not UTF-8 text (byte 0xe9" in result.output


@pytest.mark.parametrize("compress, suffix", [(gzip.compress, ".jsonl.gz"), (bz2.compress, ".jsonl.bz2"),
                                              (None, ".jsonl.zst"), (gzip.compress, ".jsonl")])
def test_compressed_jsonl_is_read(cli, tmp_path, compress, suffix):
    plain = write_jsonl(tmp_path / "plain.jsonl", news_rows(5)).read_bytes()
    path = tmp_path / "data" / f"in{suffix}"
    path.parent.mkdir()
    if compress is None:
        subprocess.run(["zstd", "-q", str(tmp_path / "plain.jsonl"), "-o", str(path)], check=True)
    else:
        path.write_bytes(compress(plain))
    for target in (path, path.parent):  # the file, and a folder holding it
        result = _dry(cli, tmp_path, target)
        assert result.exit_code == 0, result.output
        assert "input: 5 rows" in result.output


def test_bom_deep_nesting_and_json_arrays(cli, tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + write_jsonl(tmp_path / "p.jsonl", news_rows(2)).read_bytes())
    assert _dry(cli, tmp_path, bom).exit_code == 0
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(news_rows(1)[0]) + "\n" + '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    result = _dry(cli, tmp_path, deep)
    assert result.exit_code == 2 and f"{deep}, line 2: JSON nested too deeply" in result.output
    array = tmp_path / "array.json"
    array.write_text(json.dumps(news_rows(2), indent=2))
    result = _dry(cli, tmp_path, array)
    assert result.exit_code == 2 and "the input must be JSON Lines" in result.output


# 10. concurrency and permissions
def test_files_follow_the_umask(cli, fake, tmp_path):
    fake()
    old = os.umask(0o022)
    try:
        assert cli("run", write_job(tmp_path), "--limit", "4").exit_code == 0
    finally:
        os.umask(old)
    out = tmp_path / "out"
    for f in [out / "job.json", out / "summary.json", *(out / "results").iterdir()]:
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_a_locked_output_is_refused_before_the_preflight(cli, tmp_path):
    rows = [json.dumps(r) for r in news_rows(4)] + ["{not json"]
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    job = write_job(tmp_path, input={"path": str(tmp_path / "in.jsonl")})
    with OutputLock(tmp_path / "out", "0000-of-0001"):
        result = cli("run", job)
    assert result.exit_code == 2
    assert "another run is writing to this output" in result.output and "malformed" not in result.output


def test_concurrent_first_runs_convert_the_embedded_model_once(tmp_path, monkeypatch):
    from batch_runner.engines import models

    monkeypatch.setenv("BATCH_RUNNER_CACHE", str(tmp_path / "cache"))
    calls = []

    def slow_convert(gguf, target):
        calls.append(target)
        threading.Event().wait(0.3)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", slow_convert)
    found = []
    threads = [threading.Thread(target=lambda: found.append(models.resolve_model("smollm2-135m-instruct")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(found)) == 1
