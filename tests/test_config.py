"""The job file: unknown keys, bad values, YAML errors, env expansion, overrides (no engine)."""

import pytest
import yaml
from conftest import ROOT, base_job, write_job

from batch_runner.config import JobSpec, load_job
from batch_runner.errors import JobError


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
    ("prompt", "render_timeout_s", 0, "prompt.render_timeout_s"),
    ("prompt", "max_render_chars", -1, "prompt.max_render_chars"),
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


# Issue 25, item 3: YAML aliases expand without bound; a message never quotes more than an excerpt.
def alias_bomb(indent: str = "") -> str:
    """Ten levels of nine aliases: 9**10 values once written out, a few hundred bytes as YAML."""
    lines = [f'{indent}a0: &a0 [{", ".join(["lol"] * 9)}]']
    lines += [f'{indent}a{i}: &a{i} [{", ".join([f"*a{i - 1}"] * 9)}]' for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def bounded_cli(*args, limit_gib: int = 4):
    """The CLI in a process of its own with its memory capped: before the fix, a bomb fails it
    (MemoryError) rather than the machine."""
    import resource
    import subprocess

    from conftest import batch_run_cmd

    cap = limit_gib << 30
    return subprocess.run(batch_run_cmd(*args), capture_output=True, text=True, timeout=180,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))


@pytest.mark.parametrize("where", ["description", "engine.extra", "--set"])
def test_an_alias_bomb_is_refused_naming_the_file_and_line(tmp_path, where):
    path = write_job(tmp_path)
    text, sets = path.read_text(), []
    if where == "--set":
        flow = alias_bomb().replace("\n", ", ").rstrip(", ")
        sets = ["--set", f"engine.extra={{{flow}}}"]
    else:
        text = text.replace("engine:\n", "engine:\n  extra:\n" + alias_bomb("    "), 1)
        if where == "description":
            text = "\n".join(l for l in text.splitlines() if not l.startswith("description:")) + "\ndescription: *a9\n"
        path.write_text(text)
    result = bounded_cli("run", path, "--dry-run", *sets)
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip()
    assert "YAML aliases expand" in message and "Traceback" not in message
    if where != "--set":  # the line of the alias that expands most
        largest = "description: *a9" if where == "description" else "&a9"
        line = next(i for i, l in enumerate(text.splitlines(), 1) if largest in l)
        assert f"{path}, line {line}:" in message
    assert len(message) < 600  # never the expanded value
    assert not (tmp_path / "out").exists()


def test_a_few_aliases_still_load(tmp_path):
    path = write_job(tmp_path)
    text = path.read_text().replace("  temperature: 0\n", "  temperature: &t 0.5\n  top_p: *t\n", 1)
    path.write_text(text)
    job = load_job(path)
    assert job.sampling.temperature == job.sampling.top_p == 0.5


def test_a_recursive_alias_and_deep_nesting_are_refused(tmp_path):
    path = write_job(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("engine:\n", "engine:\n  extra:\n    loop: &loop [*loop]\n", 1))
    with pytest.raises(JobError, match="refers to a value that holds it"):
        load_job(path)
    path.write_text(text.replace("engine:\n", "engine:\n  extra:\n    deep: " + "[" * 5000 + "]" * 5000 + "\n", 1))
    with pytest.raises(JobError, match="nested too deeply"):
        load_job(path)


def test_a_job_file_past_its_size_bound_is_refused(tmp_path):
    path = write_job(tmp_path, prompt={"system": "x" * (2 << 20)})
    with pytest.raises(JobError, match="larger than 1 MiB") as e:
        load_job(path)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("section, key, value", [
    ("engine", "profile", "fast" * 100_000),
    ("model", "lora", "x" * 100_000),
    ("sampling", "top_p", list(range(100_000))),
    ("engine", "x" * 100_000, 1),
])
def test_a_message_quotes_only_an_excerpt_of_a_value(tmp_path, section, key, value):
    path = write_job(tmp_path, **{section: {key: value}})
    with pytest.raises(JobError) as e:
        load_job(path)
    assert str(path) in str(e.value) and section in str(e.value)
    assert len(str(e.value)) < len(str(path)) + 600


def test_a_bad_set_value_is_quoted_as_an_excerpt(tmp_path):
    with pytest.raises(JobError) as e:
        load_job(write_job(tmp_path), ["sampling.stop=[" + "x, " * 100_000 + "{"])
    assert "--set sampling.stop" in str(e.value) and len(str(e.value)) < 600
    with pytest.raises(JobError) as e:
        load_job(write_job(tmp_path), ["x" * 100_000])
    assert "expected section.key=value" in str(e.value) and len(str(e.value)) < 300


def test_a_yaml_error_quotes_only_an_excerpt(tmp_path):
    path = write_job(tmp_path)
    path.write_text(path.read_text() + "description: *" + "a" * 100_000 + "\n")  # an undefined alias, named
    with pytest.raises(JobError, match="YAML syntax error: found undefined alias") as e:
        load_job(path)
    assert len(str(e.value)) < len(str(path)) + 400


@pytest.mark.parametrize("key", ["output.dir", "model.name", "input.path", "output.metrics_dir", "model.tokenizer"])
def test_a_path_too_long_for_any_file_system_is_a_job_error_naming_its_key(tmp_path, key):
    """Not an OSError (ENAMETOOLONG) later, with a full disk's advice and exit 1."""
    section, name = key.split(".")
    path = write_job(tmp_path, **{section: {name: f"{tmp_path}/{'d' * 300}"}})
    with pytest.raises(JobError) as refused:
        load_job(path)
    assert f"{key}: too long for a path" in str(refused.value) and len(str(refused.value)) < 400


def test_every_error_message_is_bounded_whatever_it_quotes():
    huge = "c" * 100_000
    message = str(JobError([f"column {huge!r} is in no row"] * 100))
    assert len(message) < 20_000 and "(99,6" in message and "more lines)" in message
    assert str(JobError("short")) == "short"


def test_an_openai_job_reads_back_from_its_own_json():
    """Node workers and Ray tasks get the job as its JSON dump; the columns an OpenAI job fills in must
    read back (they were refused as 'given': data_parallel on an OpenAI batch file failed in every worker)."""
    job = load_job(ROOT / "jobs/openai-batch.yaml")
    again = JobSpec.model_validate_json(job.model_dump_json())
    assert again == job and again.prompt.messages_column == "messages"
