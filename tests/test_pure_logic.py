"""Pure logic: sharding, grouping, fingerprints, atomic writes (no engine)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_runner.atomic import atomic_write
from batch_runner.errors import JobError
from batch_runner.executors.slurm import shard_from_slurm
from batch_runner.inputs.assignment import Shard, parse_shard, shard_of
from batch_runner.output.parts import committed_parts, sweep_temporaries
from batch_runner.output.resume import changed_keys, fingerprint_hash
from batch_runner.runner.ordering import chunked, grouped


def test_shards_partition_ids_stably():
    ids = [f"row-{i}" for i in range(2000)]
    owners = [[Shard(i, 4).owns(x) for i in range(4)] for x in ids]
    assert all(sum(o) == 1 for o in owners)
    counts = [sum(o[i] for o in owners) for i in range(4)]
    assert min(counts) > 400  # roughly balanced
    assert shard_of("row-7", 4) == shard_of("row-7", 4)
    assert [shard_of(x, 4) for x in ids[:5]] == [shard_of(x, 4) for x in ids[:5]]


@pytest.mark.parametrize("env, recorded, expected", [
    ({}, None, None),
    # a new output: the count is the array's highest index + 1; the index is the task id
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MAX": "7"}, None, Shard(3, 8)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}, None, Shard(3, 8)),
    # a resubmitted subset (Slurm says 2 tasks, min 1): the output's recorded count decides
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "2"}, 3, Shard(2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "3",
      "SLURM_ARRAY_TASK_MAX": "5"}, 8, Shard(5, 8)),
])
def test_shard_from_slurm(env, recorded, expected):
    assert shard_from_slurm(env, recorded) == expected


def test_a_strided_array_is_refused_naming_the_step():
    """--array=0-10:5 (tasks 0, 5, 10) would make 11 shards of which 3 run, without a word."""
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
           "SLURM_ARRAY_TASK_MAX": "10", "SLURM_ARRAY_TASK_STEP": "5"}
    with pytest.raises(JobError, match=r"SLURM_ARRAY_TASK_STEP=5: .* 11 shards of which only 3 run"):
        shard_from_slurm(env)
    assert shard_from_slurm(env, 11) == Shard(5, 11)  # resubmitting some shards of a recorded output
    assert shard_from_slurm({**env, "SLURM_ARRAY_TASK_STEP": "1", "SLURM_ARRAY_TASK_COUNT": "11"}) == Shard(5, 11)


def test_bad_shards():
    with pytest.raises(JobError):
        parse_shard("4/4")
    with pytest.raises(JobError):
        parse_shard("a/b")
    with pytest.raises(JobError, match="not a shard of this output: it has 4 shards .0-3, fixed by its first run"):
        shard_from_slurm({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "10"}, 4)


def test_status_offers_no_running_shard_to_resubmit(tmp_path):
    import json

    from batch_runner.output.resume import OutputLock
    from batch_runner.output.status import array_size, array_tasks, shard_states

    (tmp_path / "job.json").write_text(json.dumps({"fingerprint": {"shards": 3}, "job": {"engine": {}}}))
    assert array_size(tmp_path) == 3
    with OutputLock(tmp_path, "0001-of-0003"):
        states = shard_states(tmp_path)
        assert [s.state for s in states] == ["missing", "running", "missing"]
        assert array_tasks(tmp_path, states) == [0, 2]


def test_grouping_keeps_every_row_and_groups_within_window():
    rows = [(i, f"p{i % 3}") for i in range(12)]
    out = list(grouped(rows, key=lambda r: r[1], window=12))
    assert sorted(out) == sorted(rows)
    keys = [r[1] for r in out]
    assert keys == ["p0"] * 4 + ["p1"] * 4 + ["p2"] * 4
    small = list(grouped(rows, key=lambda r: r[1], window=6))
    assert sorted(small) == sorted(rows)
    assert [r[1] for r in small[:6]] == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_chunked():
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_fingerprint_changes_are_named():
    a = {"sampling": {"temperature": 0.0}, "model": {"name": "m"}}
    b = {"sampling": {"temperature": 0.7}, "model": {"name": "m"}}
    assert fingerprint_hash(a) != fingerprint_hash(b)
    assert changed_keys(a, b) == ["sampling.temperature: 0.0 -> 0.7"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "results" / "part-x.parquet"

    def broken(tmp):
        pq.write_table(pa.table({"a": [1]}), tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert not target.exists()
    assert list((tmp_path / "results").iterdir()) == []


def test_temporaries_are_never_parts(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / ".part-0000-of-0002-r-b000001.parquet.x.tmp").write_bytes(b"half a file")
    (results / ".part-0001-of-0002-r-b000001.parquet.y.tmp").write_bytes(b"another shard, still writing")
    atomic_write(results / "part-b.parquet", lambda tmp: pq.write_table(pa.table({"a": [1]}), tmp))
    assert [p.name for p in committed_parts(results)] == ["part-b.parquet"]
    assert sweep_temporaries(tmp_path, "0000-of-0002") == 1  # only its own shard's
    assert [p.name for p in results.glob(".*")] == [".part-0001-of-0002-r-b000001.parquet.y.tmp"]


@pytest.mark.parametrize("dp, tp, devices, shard, expected, expected_tp", [
    ("auto", 1, ["0", "1", "2", "3"], Shard(0, 1), [("0000-of-0004", ["0"]), ("0003-of-0004", ["3"])], 1),
    (2, "auto", ["4", "5", "6", "7"], Shard(0, 1), [("0000-of-0002", ["4", "5"]), ("0001-of-0002", ["6", "7"])], 2),
    (2, 1, ["0", "1"], Shard(3, 4), [("0006-of-0008", ["0"]), ("0007-of-0008", ["1"])], 1),  # Slurm task 3 of 4
    ("auto", 1, [], Shard(0, 1), [("0000-of-0001", None), ("0000-of-0001", None)], 1),  # no GPU: one engine
    (2, 1, [], Shard(0, 1), [("0000-of-0002", None), ("0001-of-0002", None)], 1),  # no GPU: both on the CPU
])
def test_data_parallel_plan(dp, tp, devices, shard, expected, expected_tp):
    from batch_runner.executors.node import plan

    workers, got_tp = plan(dp, tp, shard, devices)
    assert [(workers[0].shard.label, workers[0].devices), (workers[-1].shard.label, workers[-1].devices)] == expected
    assert got_tp == expected_tp


def test_data_parallel_needs_enough_gpus():
    from batch_runner.executors.node import plan

    with pytest.raises(JobError, match="executor.data_parallel: 2 engines .* need 4 GPUs, but 2 are visible"):
        plan(2, 2, Shard(0, 1), ["0", "1"])


def test_combined_exit_status_is_the_worst():
    from batch_runner.errors import ExitStatus
    from batch_runner.executors.base import combined_status
    from batch_runner.executors.node import describe_exit

    assert combined_status([0, 0]) == ExitStatus.OK
    assert combined_status([0, 3]) == ExitStatus.ROW_ERRORS
    assert combined_status([130, 0]) == ExitStatus.ABORTED  # a worker's second SIGINT (it raised ValueError)
    assert combined_status([130, 1]) == ExitStatus.FAILED
    assert all(combined_status([int(status)]) == status for status in ExitStatus)  # each has its rank
    assert combined_status([3, 75]) == ExitStatus.INTERRUPTED
    assert combined_status([75, -9]) == ExitStatus.FAILED
    assert describe_exit(-9) == "was killed by SIGKILL"


def test_resubmit_indices_with_data_parallel(tmp_path):
    import json

    from batch_runner.output.status import array_tasks, shard_states

    (tmp_path / "job.json").write_text(json.dumps(
        {"fingerprint": {"shards": 6}, "job": {"engine": {"data_parallel": 2}}}))
    (tmp_path / "shards").mkdir()
    for label in ("0000-of-0006", "0001-of-0006", "0003-of-0006"):
        (tmp_path / "shards" / f"{label}.done").write_text(json.dumps({"shard_rows": 0}))
    states = shard_states(tmp_path)
    # shards 2 and 4-5 are unfinished: array tasks 1 (shards 2-3) and 2 (shards 4-5)
    assert array_tasks(tmp_path, states) == [1, 2]


def test_metrics_while_running_parse_and_escape_labels(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from batch_runner.observe.metrics import MetricsFile, Snapshot

    m = MetricsFile(tmp_path, 'odd"name', "0001-of-0004", interval=3600)
    snap = Snapshot(rows=10, rows_done=4, errors_by_code={"prompt_too_long": 1}, prompt_tokens=100,
                    cached_prompt_tokens=50, output_tokens=20, output_tok_s=2.5)
    m.update(snap)
    first = m.path.read_text()
    m.update(snap)  # within the interval: not written again
    assert m.path.read_text() == first
    samples = {s.name: s for f in text_string_to_metric_families(first) for s in f.samples}
    assert samples["batch_run_running"].value == 1
    assert "batch_run_exit_status" not in samples  # not ended yet
    assert samples["batch_run_rows_done"].labels["batch_job"] == 'odd"name'
    m.update(Snapshot(**{**snap.__dict__, "exit_status": 75}), force=True)
    samples = {s.name: s for f in text_string_to_metric_families(m.path.read_text()) for s in f.samples}
    assert samples["batch_run_exit_status"].value == 75
    assert "batch_run_last_success_timestamp_seconds" not in samples  # interrupted is no success


def test_metrics_carry_the_last_success_over_to_the_next_run(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from batch_runner.observe.metrics import MetricsFile, Snapshot

    snap = Snapshot(rows=2, rows_done=2, errors_by_code={}, prompt_tokens=1, cached_prompt_tokens=0,
                    output_tokens=1, output_tok_s=1.0, exit_status=0)
    MetricsFile(tmp_path, "job", "0000-of-0001").update(snap, force=True)
    then = MetricsFile(tmp_path, "job", "0000-of-0001").last_success
    assert then is not None
    rerun = MetricsFile(tmp_path, "job", "0000-of-0001")
    rerun.update(Snapshot(**{**snap.__dict__, "exit_status": 1}), force=True)  # a failed run keeps it
    samples = {s.name: s.value for f in text_string_to_metric_families(rerun.path.read_text()) for s in f.samples}
    assert samples["batch_run_last_success_timestamp_seconds"] == then
    assert samples["batch_run_exit_status"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["batch_run-job-0000-of-0001.prom"]  # no temporary left


def test_merge_refusal_never_offers_an_empty_array(tmp_path):
    from batch_runner.output.status import ShardState, unfinished_message

    (tmp_path / "job.json").write_text('{"fingerprint": {"shards": 3}, "job": {}}')
    state = lambda i, s: ShardState(Shard(i, 3), s, 0, 0, None)  # noqa: E731
    all_running = unfinished_message(tmp_path, [state(0, "complete"), state(1, "running"), state(2, "running")])
    assert "shards not complete: 1-2" in all_running and "running now: 1-2" in all_running
    assert "--array" not in all_running
    mixed = unfinished_message(tmp_path, [state(0, "missing"), state(1, "running"), state(2, "partial")])
    assert "running now: 1 " in mixed and "sbatch --array=0,2 ..." in mixed


def test_a_changed_value_is_shown_in_excerpts():
    prompt = "You summarize news. " * 5000
    edited = prompt[:50_000] + "French. " + prompt[50_008:]  # a change in the middle: both excerpts alike
    changes = changed_keys({"prompt": {"system": prompt}}, {"prompt": {"system": edited}})
    assert len(changes) == 1 and len(changes[0]) < 400, changes
    assert changes[0].startswith("prompt.system: 'You summarize news.") and "differ from character 50001" in changes[0]


@pytest.mark.parametrize("template, columns", [
    ("{% if text %}{% set x = 1 %}{{ x }}{% endif %}", ["text"]),  # set in a branch: the template's own
    ("{% macro f(k) %}{% if k < 3 %}{{ f(k + 1) }}{% endif %}{% endmacro %}{{ f(start) }}", ["start"]),
    ("{% set y %}{{ title }}{% endset %}{{ y }} {% for w in words %}{{ w }}{% endfor %}", ["title", "words"]),
    ("{{ a.b }} {{ c[d] }}", ["a", "c", "d"]),
])
def test_the_columns_a_template_reads_are_the_names_it_does_not_define(template, columns):
    import jinja2

    from batch_runner.inputs.prompts import template_columns

    assert template_columns(jinja2.Environment().parse(template)) == columns
