"""What a run trusts in its output folder: regression tests of issue 25 (items 1, 4, 5, 10).

A resumed run verifies the input's content, not its size; parts batch-run did not write for this
output are refused, never counted as done; --fresh acts only after every check; a busy output is
refused before the pre-flight. Through the CLI in-process, with the fake engine.
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import news_rows, write_job, write_jsonl

from batch_runner.output.resume import OutputLock, fingerprint_hash


def snapshot(folder) -> dict:
    """Every file under folder (links too, not followed) with its bytes' digest: what 'unchanged' means."""
    return {str(p.relative_to(folder)): (p.is_symlink(), hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def unlocked(files: dict) -> dict:
    """A snapshot without the lock files: a run that took the lock to compare under it wrote its pid there."""
    return {k: v for k, v in files.items() if not k.startswith(".lock-")}


@pytest.fixture
def done(cli, fake, tmp_path):
    """A complete output of 30 rows; returns (job file, input file, output folder)."""
    fake()
    path = write_jsonl(tmp_path / "in.jsonl", news_rows(30))
    job = write_job(tmp_path, input={"path": str(path)}, output={"batch_size": 8})
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    return job, path, tmp_path / "out"


# 5. --fresh acts only after every check that can refuse the run
LATE_CHECKS = {
    # (with vLLM's own check of engine.extra: the pre-flight's, no engine starts)
    "engine.extra key vLLM lacks": (["--set", "engine.backend=vllm", "--set", "engine.extra.bogus_key=1"],
                                    "engine.extra.bogus_key"),
    "engine.extra key vLLM lacks, data_parallel": (["--set", "engine.backend=vllm", "--set", "engine.extra.bogus_key=1",
                                                    "--set", "engine.data_parallel=2"], "engine.extra.bogus_key"),
    "sampling value vLLM rejects": (["--set", "sampling.temperature=-1"], "sampling"),
    "template column in no row": (["--set", "prompt.template='{{ nosuch }}'"], "nosuch"),
}


@pytest.mark.parametrize("case", sorted(LATE_CHECKS))
def test_fresh_changes_nothing_when_any_check_refuses_the_run(cli, done, tmp_path, case):
    job, _, out = done
    args, named = LATE_CHECKS[case]
    before = snapshot(tmp_path)
    result = cli("run", job, "--fresh", *args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert snapshot(tmp_path) == before  # no job.json rewritten, nothing moved aside
    assert not list(tmp_path.glob("out.replaced-*"))


def unlocks(files: dict) -> dict:
    """A snapshot of a folder above the output without its lock files (a run writes its pid there)."""
    return {k: v for k, v in files.items() if "/.lock-" not in k}


# 5. ... and after the engine's start: a value vLLM refuses only when it builds its config or starts
VLLM_REFUSES = ("1 validation error for SchedulerConfig\nmax_num_seqs\n  Input should be greater than 0 "
                "[type=greater_than, input_value=-5, input_type=int]\n    For further information visit "
                "https://errors.pydantic.dev/2.11/v/greater_than")


@pytest.mark.parametrize("args", [["--set", "engine.max_num_seqs=5"],
                                  ["--set", "engine.max_num_seqs=5", "--set", "sampling.max_tokens=9"]],
                         ids=["same job", "changed job"])
def test_fresh_with_an_engine_that_fails_to_start_changes_nothing(cli, done, fake, tmp_path, args):
    job, _, out = done
    before, record = snapshot(tmp_path), (out / "job.json").read_bytes()
    fake(fail_start=VLLM_REFUSES)
    result = cli("run", job, "--fresh", *args)
    assert result.exit_code == 1, result.output
    assert "vLLM could not start the engine with these settings" in result.output
    assert "max_num_seqs Input should be greater than 0" in result.output and "check engine.*" in result.output
    assert "nothing was moved; the old results were left in place" in result.output
    assert "Traceback" not in result.output and "For further information" not in result.output
    assert unlocks(snapshot(tmp_path)) == unlocks(before)  # same files, same bytes: nothing moved aside
    assert (out / "job.json").read_bytes() == record and not list(tmp_path.glob("out.replaced-*"))
    again = cli("run", job)  # the old job still resumes without --fresh: it is complete, nothing runs again
    assert again.exit_code == 0, again.output
    assert {k: v for k, v in snapshot(tmp_path).items() if k.startswith("out/results/")} == \
        {k: v for k, v in before.items() if k.startswith("out/results/")}


def test_fresh_with_an_engine_that_starts_moves_the_old_results_aside(cli, done, fake, tmp_path):
    job, _, out = done
    record, parts = (out / "job.json").read_bytes(), sorted(p.name for p in (out / "results").iterdir())
    fake()
    result = cli("run", job, "--fresh", "--set", "sampling.max_tokens=9")
    assert result.exit_code == 0, result.output
    moved = next(tmp_path.glob("out.replaced-*"))
    assert (moved / "job.json").read_bytes() == record
    assert sorted(p.name for p in (moved / "results").iterdir()) == parts
    assert json.loads((out / "job.json").read_text())["fingerprint"]["sampling"]["max_tokens"] == 9


def test_a_stop_while_the_engine_starts_under_fresh_moves_nothing(cli, done, fake, tmp_path):
    job, _, out = done
    before = snapshot(tmp_path)
    # SIGTERM (scancel, a time limit) comes while the engine starts
    fake(on_start=lambda: os.kill(os.getpid(), signal.SIGTERM), start_s=5)
    result = cli("run", job, "--fresh", "--set", "sampling.max_tokens=9")
    assert result.exit_code == 75, result.output
    assert "received while the engine was starting" in result.output
    assert unlocks(snapshot(tmp_path)) == unlocks(before) and not list(tmp_path.glob("out.replaced-*"))


# 10. a busy output is refused before the pre-flight, and the refusal creates and changes nothing
BUSY = {
    "local": ([], ["0000-of-0001"], {}),
    "--shard": (["--shard", "1/2"], ["0001-of-0002"], {}),
    "data_parallel": (["--set", "engine.data_parallel=2"], ["0000-of-0002", "0001-of-0002"], {}),
    "slurm array task": ([], ["0001-of-0002"], {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2",
                                                 "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1"}),
}


@pytest.mark.parametrize("case", sorted(BUSY))
def test_a_busy_output_is_refused_before_the_preflight(cli, fake, tmp_path, monkeypatch, case):
    args, held, env = BUSY[case]
    fake()
    path = write_jsonl(tmp_path / "in.jsonl", news_rows(6))
    job = write_job(tmp_path, input={"path": str(path)})
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def too_late(*a, **kw):
        raise AssertionError("the pre-flight ran on a busy output")
    monkeypatch.setattr("batch_runner.runner.shard.preflight", too_late)
    locks = [OutputLock(tmp_path / "out", label) for label in held]
    for lock in locks:
        lock.acquire()
    try:
        before = snapshot(tmp_path)
        result = cli("run", job, "--fresh", *args)
        after = snapshot(tmp_path)
    finally:
        for lock in locks:
            lock.release()
    assert result.exit_code == 2, result.output
    assert "another run is writing to this output" in result.output and "pid " in result.output
    assert after == before


def test_a_run_over_another_split_of_a_busy_output_is_refused_before_the_preflight(cli, fake, tmp_path,
                                                                                   monkeypatch):
    fake()
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", news_rows(6)))})
    assert cli("run", job, "--shard", "0/2").exit_code == 0
    monkeypatch.setattr("batch_runner.runner.shard.preflight", lambda *a: pytest.fail("the pre-flight ran"))
    with OutputLock(tmp_path / "out", "0001-of-0002"):  # an array task runs shard 1 of 2 now
        before = snapshot(tmp_path)
        result = cli("run", job, "--fresh")  # one shard of all the rows: a different job
        assert snapshot(tmp_path) == before
    assert result.exit_code == 2 and "another run is writing to this output" in result.output


# 1. the fingerprint holds the input's content: a same-size edit is refused, a touch resumes
def edit_in_place(path, line: int, new: str) -> None:
    """Overwrite the start of a row's text on a 1-based line, keeping the file's size."""
    lines = path.read_bytes().splitlines(keepends=True)
    at = lines[line - 1].index(b'"text": "') + len('"text": "')
    lines[line - 1] = lines[line - 1][:at] + new.encode() + lines[line - 1][at + len(new):]
    path.write_bytes(b"".join(lines))


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr("batch_runner.inputs.digest.BLOCK_BYTES", 2048)  # a few lines per block, as MiBs are in big files


def test_an_edit_that_keeps_the_size_is_refused_naming_the_file_and_its_lines(cli, small_blocks, done):
    job, path, out = done
    size = path.stat().st_size
    edit_in_place(path, 17, "ZZ")
    assert path.stat().st_size == size
    before = snapshot(out)
    result = cli("run", job)
    assert result.exit_code == 2, result.output
    assert f"input file {path.resolve()} changed (same size): the first change is in lines " in result.output
    first, last = map(int, re.search(r"in lines (\d+)-(\d+)", result.output).groups())
    assert first <= 17 <= last and last - first <= 6
    assert "--fresh" in result.output and "Traceback" not in result.output
    assert unlocked(snapshot(out)) == unlocked(before)  # exit 2: nothing changed
    again = cli("run", job, "--fresh")
    assert again.exit_code == 0 and "0 were done before" in again.output, again.output


def test_a_touched_input_resumes(cli, done):
    job, path, out = done
    os.utime(path, (time.time() + 3600, time.time() + 3600))  # new mtime, same bytes
    result = cli("run", job)
    assert result.exit_code == 0 and "30 were done before" in result.output, result.output


@pytest.mark.parametrize("kind", ["gzip", "parquet", "a file added to the input folder"])
def test_changed_compressed_parquet_and_folder_inputs_are_refused(cli, fake, small_blocks, tmp_path, kind):
    fake()
    folder = tmp_path / "data"
    folder.mkdir()
    rows = news_rows(12)
    if kind == "parquet":
        path = folder / "in.parquet"
        write = lambda rows: pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)  # noqa: E731
    else:
        path = folder / ("in.jsonl.gz" if kind == "gzip" else "in.jsonl")

        def write(rows):
            text = "".join(json.dumps(r) + "\n" for r in rows).encode()
            path.write_bytes(gzip.compress(text, mtime=0) if kind == "gzip" else text)
    write(rows)
    job = write_job(tmp_path, input={"path": str(folder)})
    assert cli("run", job).exit_code == 0
    if kind == "a file added to the input folder":
        write_jsonl(folder / "more.jsonl", [{**r, "id": r["id"] + "-b"} for r in rows])
        expected = f"input file {(folder / 'more.jsonl').resolve()}: new in the input"
    else:
        rows[5] = {**rows[5], "text": rows[5]["text"].replace(rows[5]["text"][:2], "ZZ", 1)}
        write(rows)
        expected = f"input file {path.resolve()} changed"
    result = cli("run", job)
    assert result.exit_code == 2 and expected in result.output, result.output
    if kind == "gzip":
        assert "its bytes differ from byte 0 on" in result.output  # no line numbers in compressed bytes
    if kind == "parquet":  # the row groups in the first changed block, from the footer
        first, last = map(int, re.search(r"the first change is in rows (\d+)-(\d+)", result.output).groups())
        assert first <= 6 <= last and last - first < 8


def test_an_output_recorded_with_sizes_only_gets_a_clear_message(cli, done):
    job, path, out = done
    record = json.loads((out / "job.json").read_text())
    record["fingerprint"]["input"]["files"] = [[str(path.resolve()), path.stat().st_size]]  # as before issue 25
    record.pop("input_blocks"), record.pop("output_id")
    record["fingerprint_hash"] = fingerprint_hash(record["fingerprint"])
    (out / "job.json").write_text(json.dumps(record))
    result = cli("run", job)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "records the input's file sizes, not its content" in result.output and "--fresh" in result.output


def test_a_changed_hf_dataset_is_refused_by_its_content_fingerprint(cli, fake, tmp_path):
    import datasets

    fake()
    rows = news_rows(8)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    job = write_job(tmp_path, input={"path": None, "dataset": {"path": str(tmp_path / "ds")}})
    assert cli("run", job).exit_code == 0
    assert "8 were done before" in cli("run", job).output  # the same dataset resumes
    rows[2] = {**rows[2], "text": "ZZ" + rows[2]["text"][2:]}
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds2"))
    shutil.rmtree(tmp_path / "ds")
    (tmp_path / "ds2").rename(tmp_path / "ds")  # same folder, same size, other content
    result = cli("run", job)
    assert result.exit_code == 2 and "input.dataset_fingerprint:" in result.output, result.output


# 4. files batch-run did not write for this output are named and refused, never counted as done
def other_output(cli, tmp_path, ids: list[str]):
    """A complete output of another job over rows with these ids (its own input and folder)."""
    rows = [{**r, "id": i} for r, i in zip(news_rows(len(ids)), ids)]
    path = write_jsonl(tmp_path / "other.jsonl", rows)
    job = write_job(tmp_path, "other.yaml", input={"path": str(path)}, output={"dir": str(tmp_path / "other")})
    assert cli("run", job).exit_code == 0
    return tmp_path / "other"


def foreign_cases(cli, tmp_path, job, out) -> dict:
    """Ways a file that is not this output's gets into results/ (each makes one file)."""
    other = other_output(cli, tmp_path, [f"foreign-{i}" for i in range(5)])
    same_job = tmp_path / "twin"  # the same job (same fingerprint) run into another folder
    assert cli("run", job, "--output", same_job).exit_code == 0
    (tmp_path / "notes.txt").write_text("not parquet")
    part = lambda folder: next((folder / "results").glob("part-*.parquet"))  # noqa: E731
    return {
        "a part of another job, copied": lambda: shutil.copy(part(other), out / "results" / part(other).name),
        "a part of another job, linked": lambda: (out / "results" / part(other).name).symlink_to(part(other)),
        "a part of the same job's other output": lambda: shutil.copy(part(same_job),
                                                                    out / "results" / part(same_job).name),
        "a link to a file that is not Parquet": lambda: (out / "results" / "part-0000-of-0001-x-b000009.parquet")
        .symlink_to(tmp_path / "notes.txt"),
        "a file that is not Parquet": lambda: shutil.copy(tmp_path / "notes.txt",
                                                          out / "results" / "part-0000-of-0001-x-b000009.parquet"),
        "a stats part linked in": lambda: (out / "stats" / "part-0000-of-0001-x-b000009.parquet")
        .symlink_to(next((out / "stats").glob("part-*"))),
        "a part with another schema": lambda: pq.write_table(  # its footer's metadata kept
            pq.read_table(part(out)).append_column("extra", pa.array([1] * pq.read_metadata(part(out)).num_rows)),
            part(out)),
    }


FOREIGN = {"a part of another job, copied": "written for another output",
           "a part of another job, linked": "a link",
           "a part of the same job's other output": "written for another output",
           "a link to a file that is not Parquet": "a link",
           "a file that is not Parquet": "not a readable Parquet file",
           "a stats part linked in": "a link",
           "a part with another schema": "another schema than this output's"}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_a_foreign_file_is_named_and_refused_by_status_merge_report_and_a_rerun(cli, done, tmp_path, case):
    job, _, out = done
    foreign_cases(cli, tmp_path, job, out)[case]()
    before = snapshot(out)
    for command in (["status", out], ["merge", out], ["report", out], ["run", job], ["run", job, "--fresh"]):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and "Move them out of the folder" in result.output, result.output
        assert "complete" not in result.output.replace("not complete", "")
        named = [line for line in result.output.splitlines() if "/results/part-" in line or "/stats/part-" in line]
        assert named and FOREIGN[case] in named[0], result.output
        assert unlocked(snapshot(out)) == unlocked(before), command  # nothing merged, moved or written


def test_a_part_with_ids_outside_the_input_is_refused_by_a_rerun(cli, done):
    job, _, out = done
    part = next((out / "results").glob("part-*.parquet"))
    table = pq.read_table(part)  # its footer's metadata kept: as if batch-run had written it
    ids = table.column("id").to_pylist()
    table = table.set_column(0, "id", pa.array(["intruder"] + ids[1:]))
    pq.write_table(table, part)
    (out / "shards" / "0000-of-0001.done").unlink()  # so that the rerun looks at the parts
    result = cli("run", job)
    assert result.exit_code == 2, result.output
    assert f"{part}: ids that are not this shard's rows of the input (intruder)" in result.output


def test_parts_rewritten_by_retry_errors_stay_this_outputs_own(cli, fake, tmp_path):
    fake(reject=lambda request: request.key.endswith(":0"))  # the first row of every batch
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", news_rows(12)))},
                    output={"batch_size": 4})
    assert cli("run", job).exit_code == 3
    fake()
    assert cli("run", job, "--retry-errors").exit_code == 0
    status = cli("status", tmp_path / "out")
    assert status.exit_code == 0 and "1/1 shards complete, 12 rows, 0 errors" in status.output, status.output
    assert cli("merge", tmp_path / "out").exit_code == 0


def test_the_python_api_refuses_an_output_with_foreign_files(cli, done, tmp_path):
    from batch_runner.api import results
    from batch_runner.config import load_job
    from batch_runner.output.ownership import ForeignFiles

    job, _, out = done
    foreign_cases(cli, tmp_path, job, out)["a part of another job, copied"]()
    with pytest.raises(ForeignFiles, match="written for another"):
        results(load_job(job, []))


def test_shards_creating_job_json_together_keep_the_first_output_id(tmp_path):
    import fcntl
    import threading

    from batch_runner.inputs.digest import InputContent
    from batch_runner.output.resume import check_fingerprint

    out = tmp_path / "out"
    out.mkdir()
    first = {"fingerprint_hash": fingerprint_hash({"a": 1}), "fingerprint": {"a": 1}, "output_id": "first"}
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another shard's run is creating job.json right now
    second = threading.Thread(target=check_fingerprint, args=(out, {"a": 1}, {}, pa.schema([]), InputContent([])))
    second.start()
    second.join(0.5)
    assert second.is_alive() and not (out / "job.json").exists()  # it waits, having written nothing
    (out / "job.json").write_text(json.dumps(first))
    os.close(fd)
    second.join(30)
    assert not second.is_alive()
    assert json.loads((out / "job.json").read_text())["output_id"] == "first"  # not overwritten


# a part of this output under another name (copied or renamed) would count its rows twice, or a
# batch under a run that never wrote it: the footer records the name each part was written as
def copied_as(out, folder: str, new_name) -> tuple:
    """A part of ``folder`` copied under a new name: (the new path, the original's name)."""
    part = sorted((out / folder).glob("part-*.parquet"))[0]
    target = out / folder / new_name(part.name)
    shutil.copy2(part, target)
    return target, part.name


def renamed_as(out, folder: str, new_name) -> tuple:
    part = sorted((out / folder).glob("part-*.parquet"))[0]
    target = out / folder / new_name(part.name)
    part.rename(target)
    return target, part.name


SAME_OUTPUT = {
    "a results part copied as another batch": (copied_as, "results", lambda n: re.sub(r"-b\d+", "-b000077", n)),
    "a results part copied as another run": (copied_as, "results",
                                             lambda n: re.sub(r"-\d{8}T\d{6}-", "-20000101T000000-", n)),
    "a results part renamed to another run": (renamed_as, "results",
                                              lambda n: re.sub(r"-\d{8}T\d{6}-", "-20000101T000000-", n)),
    "a stats part copied as another batch": (copied_as, "stats", lambda n: re.sub(r"-b\d+", "-b000077", n)),
}


@pytest.mark.parametrize("case", sorted(SAME_OUTPUT))
def test_a_part_of_this_output_under_another_name_is_named_and_refused(cli, done, case):
    job, _, out = done
    how, folder, new_name = SAME_OUTPUT[case]
    extra, original = how(out, folder, new_name)
    before = snapshot(out)
    for command in (["status", out], ["merge", out], ["report", out], ["run", job]):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and "Move them out of the folder" in result.output, result.output
        assert f"{extra}: a copy of {original} or that part renamed" in result.output, (command, result.output)
        assert "complete" not in result.output.replace("not complete", ""), result.output
        assert unlocked(snapshot(out)) == unlocked(before), command


def test_the_python_api_refuses_a_part_copied_under_another_name(done):
    from batch_runner.api import results
    from batch_runner.config import load_job
    from batch_runner.output.ownership import ForeignFiles

    job, _, out = done
    extra, original = copied_as(out, "results", lambda n: re.sub(r"-b\d+", "-b000077", n))
    with pytest.raises(ForeignFiles, match=f"a copy of {re.escape(original)}"):
        results(load_job(job, []))


def recorded_names(out) -> list[tuple[str, str]]:
    """(file name, the name its footer records) of every part in the output."""
    return [(p.name, json.loads(pq.read_metadata(p).metadata[b"batch_runner"])["name"])
            for folder in ("results", "stats", "timeline") for p in sorted((out / folder).glob("part-*"))]


def test_parts_written_by_a_run_retry_errors_and_fresh_record_their_own_names(cli, fake, tmp_path):
    from batch_runner.output.ownership import foreign_files
    from batch_runner.output.resume import read_job_record

    fake(reject=lambda request: request.key.endswith(":0"))
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", news_rows(12)))},
                    output={"batch_size": 4})
    out = tmp_path / "out"
    assert cli("run", job).exit_code == 3
    names = recorded_names(out)
    assert names and all(name == recorded for name, recorded in names), names
    fake()
    assert cli("run", job, "--retry-errors").exit_code == 0  # rewrites parts in place: same names
    names = recorded_names(out)
    assert names and all(name == recorded for name, recorded in names), names
    assert foreign_files(out, read_job_record(out)) == []
    assert cli("run", job, "--fresh").exit_code == 0
    assert all(name == recorded for name, recorded in recorded_names(out))
    moved = next(tmp_path.glob("out.replaced-*"))  # --fresh moved the old parts aside under their names
    assert all(name == recorded for name, recorded in recorded_names(moved)) and recorded_names(moved)
    assert foreign_files(out, read_job_record(out)) == []
    status = cli("status", out)
    assert status.exit_code == 0 and "1/1 shards complete, 12 rows, 0 errors" in status.output, status.output
    assert cli("merge", out).exit_code == 0


def test_merge_names_repeated_ids_and_the_parts_holding_them(done, monkeypatch):
    from batch_runner.errors import JobError
    from batch_runner.output.status import merge

    job, _, out = done
    monkeypatch.setattr("batch_runner.output.status.refuse_foreign", lambda *a: None)  # duplicates some other way
    part, other = sorted((out / "results").glob("part-*.parquet"))[:2]  # 8 rows each: the count still matches
    ids = pq.read_table(part).column("id").to_pylist()
    shutil.copy2(part, other)
    with pytest.raises(JobError) as e:
        merge(out)
    message = str(e.value)
    assert "some ids appear more than once" in message
    assert f"id {sorted(ids)[0]!r} in " in message and str(part) in message and str(other) in message
    assert f"... and {len(ids) - 5} more ids" in message


# an input edited while the run reads it: the end of the run hashes the input again
@pytest.mark.parametrize("kind", ["a line edited", "a file added to the input folder"])
def test_an_input_changed_during_the_run_is_named_and_the_shard_not_marked_complete(cli, fake, small_blocks,
                                                                                   tmp_path, kind):
    folder = tmp_path / "data"
    folder.mkdir()
    path = write_jsonl(folder / "in.jsonl", news_rows(60))
    job = write_job(tmp_path, input={"path": str(folder)}, output={"batch_size": 8})
    out = tmp_path / "out"

    def edit(polls):
        if polls == 2:  # the pre-flight has hashed the input; generation has begun
            assert (out / "job.json").exists()
            if kind == "a line edited":
                edit_in_place(path, 55, "ZZ")
            else:
                write_jsonl(folder / "more.jsonl", [{**news_rows(1)[0], "id": "late-1"}])
    fake(on_poll=edit)
    result = cli("run", job)
    assert result.exit_code == 1, result.output
    if kind == "a line edited":
        assert f"input file {path.resolve()} changed during the run (same size): the first change is in lines " \
            in result.output, result.output
    else:
        assert f"input file {(folder / 'more.jsonl').resolve()}: new in the input since the run began" \
            in result.output, result.output
    assert "may mix the old and the new content" in result.output and "--fresh" in result.output
    assert "Traceback" not in result.output
    assert not (out / "shards" / "0000-of-0001.done").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["exit_status"] == 1 and summary["input_changed"]
    status = cli("status", out)
    assert status.exit_code != 0 and "1/1 shards complete" not in status.output, status.output
    assert cli("run", job).exit_code == 2  # the input is not the one job.json records
    again = cli("run", job, "--fresh")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["input_changed"] is None


def test_an_unchanged_input_is_hashed_again_and_the_run_completes(cli, fake, tmp_path, monkeypatch):
    import batch_runner.runner.finish

    hashed = []
    real = batch_runner.runner.finish.files_content
    monkeypatch.setattr("batch_runner.runner.finish.files_content", lambda spec: hashed.append(spec) or real(spec))
    fake()
    job = write_job(tmp_path, input={"path": str(write_jsonl(tmp_path / "in.jsonl", news_rows(12)))})
    result = cli("run", job)
    assert result.exit_code == 0 and len(hashed) == 1, result.output
    assert (tmp_path / "out" / "shards" / "0000-of-0001.done").exists()


def test_a_part_cut_or_deleted_by_hand_makes_its_shard_partial_not_complete(cli, done):
    """The completion marker counts only while the parts still hold its rows: merge must never write a
    merged file that silently lacks rows."""
    job, _, out = done
    first, second = sorted((out / "results").glob("part-*.parquet"))[:2]
    table = pq.read_table(first)  # a round trip through pyarrow keeps the footer's metadata
    pq.write_table(table.slice(0, 2), first)
    second.unlink()
    status = cli("status", out)
    assert status.exit_code == 1 and "partial" in status.output and "complete" not in status.output.split("\n")[1]
    merged = cli("merge", out)
    assert merged.exit_code == 2 and "shards not complete" in merged.output
    assert cli("run", job).exit_code == 0  # the rerun answers the missing rows again
    assert cli("status", out).exit_code == 0 and len(pq.read_table(out / "results")) == 30


def test_a_part_rewritten_with_another_parts_ids_is_refused_by_a_rerun(cli, done):
    job, _, out = done
    first, second = sorted((out / "results").glob("part-*.parquet"))[:2]
    copy = pq.read_table(first).replace_schema_metadata(pq.read_table(second).schema.metadata)
    pq.write_table(copy, second)
    result = cli("run", job)
    assert result.exit_code == 2 and "appear in more than one committed row" in result.output
    assert first.name in result.output and second.name in result.output
    assert len(pq.read_table(out / "results")) == 30  # nothing was added


def test_a_long_output_name_leaves_room_for_fresh_to_move_it_aside(tmp_path):
    from batch_runner.config import load_job
    from batch_runner.errors import JobError

    with pytest.raises(JobError, match="output.dir: the folder's name is too long"):
        load_job(write_job(tmp_path, output={"dir": str(tmp_path / ("b" * 250))}))
    assert load_job(write_job(tmp_path, output={"dir": str(tmp_path / ("b" * 200))}))
