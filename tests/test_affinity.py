"""Prefix-affinity sharding: with prompt.group_by_prefix, the rows of one prefix go to one shard.

Through the CLI in-process with the fake engine (the assignment is the runner's own logic).
"""

import random

import pandas as pd
import pytest
from conftest import news_rows, write_job, write_jsonl

from batch_runner.inputs.assignment import plan

PREFIXES, PER_PREFIX, SHARDS = 6, 10, 3


def prefixed_rows(prefixes: int, per_prefix: int) -> list[dict]:
    rows = news_rows(prefixes * per_prefix)
    for i, r in enumerate(rows):
        r["system"] = f"You are editor number {i // per_prefix}. Summarize in one line."
    random.Random(0).shuffle(rows)  # the rows of one prefix scattered through the input
    return rows


def sharded_job(tmp_path, rows, **prompt):
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    return write_job(tmp_path, input={"path": str(data)}, output={"batch_size": 4},
                     prompt={"system_column": "system", **prompt})


def run_all_shards(cli, job, count=SHARDS):
    for i in range(count):
        result = cli("run", job, "--shard", f"{i}/{count}")
        assert result.exit_code == 0, result.output


def prefixes_per_shard(tmp_path, rows) -> pd.Series:
    system = {r["id"]: r["system"] for r in rows}
    stats = pd.read_parquet(tmp_path / "out" / "results")
    shard_of_id = {}
    for part in (tmp_path / "out" / "results").glob("part-*.parquet"):
        for rid in pd.read_parquet(part)["id"]:
            shard_of_id[rid] = part.name.split("-")[1]
    df = pd.DataFrame({"id": stats["id"]})
    df["shard"] = df["id"].map(shard_of_id)
    df["system"] = df["id"].map(system)
    return df.groupby("system")["shard"].nunique()


def test_each_prefix_goes_to_one_shard_and_every_id_once(cli, fake, tmp_path):
    rows = prefixed_rows(PREFIXES, PER_PREFIX)
    job = sharded_job(tmp_path, rows)
    fake()
    run_all_shards(cli, job)
    df = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(df["id"]) == sorted(r["id"] for r in rows) and df["id"].is_unique
    assert (prefixes_per_shard(tmp_path, rows) == 1).all()  # no prefix prefilled by two shards
    assert cli("status", tmp_path / "out").exit_code == 0
    assert cli("merge", tmp_path / "out").exit_code == 0


def test_without_grouping_the_id_hash_spreads_prefixes(cli, fake, tmp_path):
    rows = prefixed_rows(PREFIXES, PER_PREFIX)
    job = sharded_job(tmp_path, rows, group_by_prefix=False)
    fake()
    run_all_shards(cli, job)
    assert (prefixes_per_shard(tmp_path, rows) > 1).any()


def test_one_prefix_still_splits_evenly(cli, fake, tmp_path):
    rows = prefixed_rows(1, 240)
    job = sharded_job(tmp_path, rows)
    fake()
    run_all_shards(cli, job)
    counts = pd.read_parquet(tmp_path / "out" / "stats").groupby("shard")["requests"].sum()
    assert len(counts) == 3 and all(60 <= n <= 100 for n in counts)  # 80 each, by a hash of the id


def test_the_assignment_is_part_of_the_fingerprint(cli, fake, tmp_path):
    rows = prefixed_rows(PREFIXES, PER_PREFIX)
    job = sharded_job(tmp_path, rows)
    fake()
    assert cli("run", job, "--shard", f"0/{SHARDS}").exit_code == 0
    changed = cli("run", job, "--shard", f"1/{SHARDS}", "--set", "prompt.group_by_prefix=false")
    assert changed.exit_code == 2
    assert "assignment" in changed.output


@pytest.mark.parametrize("sizes,singles,count", [
    ({"a": 2000}, [], 4),
    ({f"p{i}": 10 for i in range(400)}, [], 4),
    ({"big": 1100, "mid": 30, "small": 7}, ["r1", "r2", "r3"], 3),
    ({f"p{i}": 3 + i % 17 for i in range(50)}, [f"s{i}" for i in range(40)], 5),
])
def test_the_plan_covers_every_row_and_stays_balanced(sizes, singles, count):
    a = plan(sizes, singles, count)
    assert {k: sum(n for _, n in v) for k, v in a.pieces.items()} == sizes
    load = [0] * count
    for pieces in a.pieces.values():
        for shard, n in pieces:
            load[shard] += n
    fair = (sum(sizes.values()) + len(singles)) / count
    assert max(load) <= fair * 1.15 + max(min(sizes.values()), 1)  # within one group of even
    assert plan(sizes, singles, count) == a  # deterministic
