"""Bad input: one clear message naming file, line and key; exit status 2; the output untouched.

These run the real CLI in-process; pre-flight fails before any engine starts.
"""

import os

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import news_rows, write_job, write_jsonl


def _run_bad(cli, tmp_path, job):
    result = cli("run", job)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists(), "bad input must not create the output"
    return result.output


def test_missing_input(cli, tmp_path):
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(tmp_path / "nope.jsonl")}))
    assert "nope.jsonl does not exist" in out


def test_unknown_format(cli, tmp_path):
    (tmp_path / "rows.csv").write_text("id,text\n1,x\n")
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(tmp_path / "rows.csv")}))
    assert "unknown input format '.csv'" in out


def test_malformed_jsonl_line_is_named(cli, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", news_rows(5))
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:-5]  # cut a line short
    path.write_text("\n".join(lines) + "\n")
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(path)}))
    assert f"{path}, line 4: malformed JSON" in out


def test_corrupt_parquet(cli, tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(news_rows(5)), path)
    path.write_bytes(path.read_bytes()[:-40])
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(path)}))
    assert f"{path}: not a readable Parquet file" in out


def test_empty_input(cli, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n")
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(path)}))
    assert "the input is empty" in out


def test_missing_prompt_and_id_columns_and_duplicates_in_one_message(cli, tmp_path):
    rows = [{"ident": f"r{i}", "body": "x"} for i in range(3)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(path)}))
    assert "column 'id' (used by input.id_column) is in no row" in out
    assert "column 'text' (used by the prompt) is in no row" in out
    assert "column 'title' (used by the prompt) is in no row" in out


def test_duplicate_ids(cli, tmp_path):
    rows = news_rows(4)
    rows[3]["id"] = rows[1]["id"]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = _run_bad(cli, tmp_path, write_job(tmp_path, input={"path": str(path)}))
    assert f"{path}, line 4: duplicate id '{rows[1]['id']}' (first at input row 2)" in out


def test_model_path_that_does_not_exist(cli, tmp_path):
    out = _run_bad(cli, tmp_path, write_job(tmp_path, model={"name": str(tmp_path / "no-model")}))
    assert "model.name" in out and "no-model" in out


def test_output_not_writable(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    job = write_job(tmp_path, output={"dir": str(blocker / "out")})
    result = cli("run", job)
    assert result.exit_code == 2
    assert "cannot write to" in result.output


def test_template_syntax_error(cli, tmp_path):
    out = _run_bad(cli, tmp_path, write_job(tmp_path, prompt={"template": "{{ text "}))
    assert "prompt.template" in out and "syntax error" in out


def test_bad_sampling_value_from_vllm(cli, tmp_path):
    out = _run_bad(cli, tmp_path, write_job(tmp_path, sampling={"extra": {"min_p": 7}}))
    assert "sampling:" in out


def test_existing_output_is_untouched_by_bad_input(cli, tmp_path):
    out_dir = tmp_path / "out"
    (out_dir / "results").mkdir(parents=True)
    marker = out_dir / "results" / "part-keep.parquet"
    pq.write_table(pa.table({"id": ["a"]}), marker)
    before = marker.stat().st_mtime_ns, sorted(os.listdir(out_dir))
    job = write_job(tmp_path, input={"path": str(tmp_path / "missing.jsonl")})
    result = cli("run", job)
    assert result.exit_code == 2
    assert (marker.stat().st_mtime_ns, sorted(os.listdir(out_dir))) == before


def test_hf_dataset_folder_input_dry_run(cli, tmp_path):
    import datasets

    datasets.Dataset.from_list(news_rows(6)).save_to_disk(str(tmp_path / "ds"))
    job = write_job(tmp_path, input={"path": None, "dataset": {"path": str(tmp_path / "ds")}})
    result = cli("run", job, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "input: 6 rows" in result.output
    assert "--- id news-0000:" in result.output


def test_dry_run_prints_prompts_and_writes_nothing(cli, tmp_path):
    result = cli("run", write_job(tmp_path), "--dry-run", "--limit", "10")
    assert result.exit_code == 0, result.output
    assert "input: 10 rows" in result.output
    assert result.output.count("--- id news-") == 3
    assert "prompt tokens, max_tokens 64" in result.output
    assert "You are a careful news editor" in result.output
    assert not (tmp_path / "out").exists()


def _openai_job(tmp_path, lines):
    import yaml

    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "oai", "model": {"name": "smollm2-135m-instruct"},
                                   "input": {"path": str(path), "format": "openai"},
                                   "output": {"dir": str(tmp_path / "out")}}))
    return path, job


def test_openai_lines_that_are_not_requests_are_all_named(cli, tmp_path):
    ok = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
          "body": {"messages": [{"role": "user", "content": "hi"}]}}
    path, job = _openai_job(tmp_path, [
        ok, {**ok, "custom_id": ""}, {**ok, "custom_id": "e", "url": "chat/completions"}, {**ok, "body": "text"}])
    out = _run_bad(cli, tmp_path, job)
    assert f"{path}, line 2: an OpenAI batch line needs a non-empty string 'custom_id'" in out
    assert f"{path}, line 3: url 'chat/completions' is not an OpenAI API endpoint (/v1/...)" in out
    assert f"{path}, line 4: 'body' must be a JSON object" in out


def test_openai_input_brings_its_own_prompt(tmp_path):
    import pytest
    import yaml

    from batch_runner.config import load_job
    from batch_runner.errors import JobError

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "oai", "model": {"name": "m"}, "prompt": {"template": "{{ x }}"},
                                   "input": {"path": "b.jsonl", "format": "openai"}}))
    with pytest.raises(JobError, match="brings its own messages"):
        load_job(job)
