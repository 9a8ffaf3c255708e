"""The job file: unknown keys, bad values, YAML errors, env expansion, overrides (no engine)."""

import pytest
import yaml

from batch_runner.config import load_job
from batch_runner.errors import JobError
from conftest import base_job, write_job


def test_summarize_job_loads():
    from conftest import SUMMARIZE

    job = load_job(SUMMARIZE)
    assert job.name == "summarize"
    assert job.model.name == "smollm2-135m-instruct"
    assert str(job.output_dir) == "outputs/summarize"


def test_unknown_key_names_nearest_valid_key_and_line(tmp_path):
    job = base_job(tmp_path)
    job["sampling"]["temprature"] = 0.5
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    with pytest.raises(JobError) as e:
        load_job(path)
    msg = str(e.value)
    assert "unknown key 'sampling.temprature'" in msg
    assert "did you mean 'temperature'?" in msg
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "temprature" in l)
    assert f"line {line}" in msg


@pytest.mark.parametrize("section, key, value, expected", [
    ("engine", "profile", "fastest", "engine.profile"),
    ("sampling", "max_tokens", 0, "sampling.max_tokens"),
    ("sampling", "top_p", 1.5, "sampling.top_p"),
    ("engine", "gpu_memory_utilization", 2, "engine.gpu_memory_utilization"),
    ("engine", "tensor_parallel_size", 0, "engine.tensor_parallel_size"),
    ("output", "batch_size", -1, "output.batch_size"),
])
def test_bad_values_name_the_key(tmp_path, section, key, value, expected):
    path = write_job(tmp_path, **{section: {key: value}})
    with pytest.raises(JobError) as e:
        load_job(path)
    assert expected in str(e.value)
    assert str(path) in str(e.value)


def test_all_problems_reported_together(tmp_path):
    path = write_job(tmp_path, sampling={"max_tokens": 0, "top_p": 7}, engine={"profil": "x"})
    with pytest.raises(JobError) as e:
        load_job(path)
    assert len(e.value.problems) == 3


def test_yaml_syntax_error_gives_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  name: [unclosed\ninput: {}\n")
    with pytest.raises(JobError) as e:
        load_job(path)
    assert "YAML syntax error" in str(e.value) and "line 4" in str(e.value)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match="cannot read job file"):
        load_job(tmp_path / "nope.yaml")


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("BR_TEST_OUT", str(tmp_path / "from-env"))
    path = write_job(tmp_path, output={"dir": "${BR_TEST_OUT}/x"})
    assert str(load_job(path).output_dir) == f"{tmp_path}/from-env/x"


def test_unset_environment_variable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("BR_TEST_UNSET", raising=False)
    path = write_job(tmp_path, output={"dir": "$BR_TEST_UNSET/x"})
    with pytest.raises(JobError, match=r"output.dir: environment variable \$BR_TEST_UNSET is not set"):
        load_job(path)


def test_overrides(tmp_path):
    path = write_job(tmp_path)
    job = load_job(path, ["sampling.temperature=0.7", 'sampling.stop=["\\n"]', "input.limit=5"])
    assert job.sampling.temperature == 0.7
    assert job.sampling.stop == ["\n"]
    assert job.input.limit == 5


def test_override_of_unknown_key_fails(tmp_path):
    with pytest.raises(JobError, match="did you mean 'max_tokens'"):
        load_job(write_job(tmp_path), ["sampling.max_token=5"])


def test_input_needs_exactly_one_source(tmp_path):
    path = write_job(tmp_path, input={"dataset": {"path": "x"}})
    with pytest.raises(JobError, match="exactly one of input.path or input.dataset"):
        load_job(path)
