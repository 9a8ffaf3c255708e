"""Object storage (s3://) against a real S3 API: moto's server, started here on a free port.

The runs use the fake engine (engine.backend: fake): what is tested is where the bytes come from and
go, not what a model says.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, batch_run_cmd, fake_job, last_row_key, news_rows, write_job

moto_server = pytest.importorskip("moto.server", reason="the test extra's moto[server]")
boto3 = pytest.importorskip("boto3")

BUCKET = "batch-run-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address  # port 0: the one the system chose
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket on the S3 server, the environment pointing at it; the boto3 client."""
    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    bucket = client.create_bucket(Bucket=BUCKET) and BUCKET
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


def put_jsonl(client, key: str, rows: list[dict], compress: bool = False) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(body) if compress else body)
    return f"s3://{BUCKET}/{key}"


def put_parquet(client, key: str, rows: list[dict]) -> str:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=7)
    client.put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue().to_pybytes())
    return f"s3://{BUCKET}/{key}"


def result_ids(out) -> list[str]:
    return sorted(pq.read_table(out / "results").column("id").to_pylist())


# --- input in object storage ---------------------------------------------------------------------

def run_on_object(s3, cli, fake, tmp_path, rows) -> tuple[str, object]:
    """The job over ``rows`` as one JSONL object in the bucket, run once with the fake engine: (url, job)."""
    url = put_jsonl(s3, "in/news.jsonl", rows)
    fake()
    job = write_job(tmp_path, input={"path": url})
    assert cli("run", job).exit_code == 0
    return url, job


def test_a_jsonl_object_runs_like_a_local_file(s3, cli, fake, tmp_path):
    rows = news_rows(12)
    url, _ = run_on_object(s3, cli, fake, tmp_path, rows)
    assert result_ids(tmp_path / "out") == sorted(r["id"] for r in rows)
    recorded = json.loads((tmp_path / "out" / "job.json").read_text())
    assert list(recorded["fingerprint"]["input"]["files"]) == [url]  # the URL, not a local path


def test_a_prefix_and_a_glob_read_every_matching_object_in_key_order(s3, cli, fake, tmp_path):
    rows = news_rows(30)
    put_jsonl(s3, "set/a.jsonl", rows[:10])
    put_jsonl(s3, "set/sub/b.jsonl.gz", rows[10:20], compress=True)
    put_parquet(s3, "set/c.parquet", rows[20:])
    s3.put_object(Bucket=BUCKET, Key="set/README.txt", Body=b"not input")
    fake()
    folder = write_job(tmp_path, input={"path": f"s3://{BUCKET}/set/"})
    assert cli("run", folder).exit_code == 0
    assert result_ids(tmp_path / "out") == sorted(r["id"] for r in rows)

    only = tmp_path / "glob"
    only.mkdir()
    glob = write_job(only, input={"path": f"s3://{BUCKET}/set/**/*.jsonl*"})
    assert cli("run", glob).exit_code == 0
    assert result_ids(only / "out") == sorted(r["id"] for r in rows[:20])


def test_a_changed_object_is_named_on_resume(s3, cli, fake, tmp_path):
    rows = news_rows(10)
    url, job = run_on_object(s3, cli, fake, tmp_path, rows)
    put_jsonl(s3, "in/news.jsonl", [*rows[:5], {**rows[5], "text": "changed"}, *rows[6:]])
    again = cli("run", job)
    assert again.exit_code != 0
    assert f"input file {url} changed" in again.output
    assert "lines 1-10" in again.output


@pytest.mark.parametrize("path, says", [
    (f"s3://{BUCKET}/nothing/here.jsonl", "does not exist"),
    (f"s3://{BUCKET}/in/*.parquet", "no object matches"),
    ("ftp://host/file.jsonl", "unknown storage scheme 'ftp'"),
])
def test_a_missing_object_or_unknown_scheme_is_a_clear_error(s3, cli, fake, tmp_path, path, says):
    put_jsonl(s3, "in/news.jsonl", news_rows(3))
    result = cli("run", write_job(tmp_path, input={"path": path}))
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output


# --- output in object storage --------------------------------------------------------------------

def keys(client, prefix: str) -> list[str]:
    found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix):] for o in found)


def bucket_dataset(prefix: str = "out"):
    """The results as a pyarrow dataset read straight from the bucket (pyarrow's S3 file system)."""
    import pyarrow.dataset as ds

    from batch_runner.storage import filesystem

    fs, path = filesystem(f"s3://{BUCKET}/{prefix}/results")
    return ds.dataset(path, filesystem=fs, format="parquet")


def bucket_results(prefix: str = "out") -> pa.Table:
    return bucket_dataset(prefix).to_table()


def test_an_output_in_s3_gets_every_id_once_and_reads_with_pyarrow_and_duckdb(s3, cli, fake, tmp_path):
    rows = news_rows(20)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    fake()
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out", "batch_size": 4})
    result = cli("run", job)
    assert result.exit_code == 0, result.output
    names = keys(s3, "out/")
    assert "job.json" in names and "summary.json" in names and "shards/0000-of-0001.done" in names
    assert sum(n.startswith("results/part-") for n in names) == 5
    assert not any(n.startswith("_locks/") for n in names)  # the lease is gone with its run
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("s3*"))  # nothing written locally
    recorded = json.loads(s3.get_object(Bucket=BUCKET, Key="out/job.json")["Body"].read())
    assert recorded["job"]["output"]["dir"] == f"s3://{BUCKET}/out"

    table = bucket_results()
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    duckdb = pytest.importorskip("duckdb")
    # duckdb's own s3:// reader (httpfs) is an extension it downloads at first use, and the tests have no
    # network: it scans pyarrow's dataset of the bucket instead (streamed, as duckdb scans any Arrow dataset)
    con = duckdb.connect()
    con.register("results", bucket_dataset())
    found = con.sql("SELECT count(*), count(DISTINCT id) FROM results").fetchall()
    assert found == [(20, 20)]

    again = cli("run", job)  # a rerun resumes from the bucket: nothing left to run
    assert again.exit_code == 0
    assert "20/20 written, 20 were done before" in again.output
    assert bucket_results().num_rows == 20


def test_fresh_and_data_parallel_are_refused_on_an_s3_output(s3, cli, fake, tmp_path):
    url = put_jsonl(s3, "in/news.jsonl", news_rows(4))
    fake()
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out"})
    assert cli("run", job).exit_code == 0
    before = keys(s3, "out/")
    fresh = cli("run", job, "--fresh")
    assert fresh.exit_code == 2
    assert "never does; give the run a new output.dir" in fresh.output
    parallel = cli("run", job, "--set", "executor.data_parallel=2")
    assert parallel.exit_code == 2
    assert "one shard per process" in parallel.output
    assert keys(s3, "out/") == before


# The runs of these tests: a dead holder's lease expires in seconds, not a minute (not fewer: a process
# importing vLLM holds the GIL for seconds at a time, and the lease's renewing thread waits meanwhile)
LEASE_TTL_S = 10


def start_run(job, *args: str, **settings) -> subprocess.Popen:
    """The CLI with the fake engine in a process of its own (to be killed), the bucket's environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BATCH_RUN_LEASE_TTL_S": str(LEASE_TTL_S),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(batch_run_cmd("run", fake_job(job, **settings), *args), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_objects(client, prefix: str, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(keys(client, prefix)) >= n:
            return
        if proc.poll() is not None:
            pytest.fail("the run ended first:\n" + proc.stderr.read()[-3000:])
        time.sleep(0.05)
    pytest.fail(f"no {n} objects under {prefix} within {timeout} s")


def test_kill_9_mid_run_then_the_rerun_waits_out_the_lease_and_runs_exactly_the_rest(s3, cli, fake, tmp_path,
                                                                                      monkeypatch):
    rows = news_rows(40)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out", "batch_size": 4})
    proc = start_run(job, per_poll=2, latency_s=0.05, hold=[last_row_key(40, 4)])
    wait_for_objects(s3, "out/results/", 3, proc)
    proc.kill()
    proc.communicate()
    done = bucket_results().num_rows
    assert 12 <= done < 40  # whole parts only: every committed batch of 4, and not all of them
    assert keys(s3, "out/_locks/") == ["0000-of-0001.lease"]  # the dead run's lease stays until it expires

    monkeypatch.setattr("batch_runner.storage.LEASE_TTL_S", LEASE_TTL_S)
    engine = fake()
    started = time.monotonic()
    resumed = cli("run", job)  # at once, as a scheduler's retry would: it waits for the dead run's lease
    assert resumed.exit_code == 0, resumed.output
    assert "its lease is held by" in resumed.output and "waiting for it to expire" in resumed.output
    assert "took over the expired lease" in resumed.output
    assert time.monotonic() - started < LEASE_TTL_S + 30  # bounded: the lease's time left and the run itself
    assert len(engine.submitted) == 40 - done  # only the rows without a result in the bucket ran again
    ids = bucket_results().column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(set(ids)) == 40
    assert keys(s3, "out/_locks/") == []


def test_two_runs_started_together_on_one_s3_output_one_is_refused(s3, tmp_path):
    rows = news_rows(40)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out", "batch_size": 4})
    # (each run takes seconds after its lease: far longer than the two starts differ by)
    procs = [start_run(job, per_poll=2, latency_s=0.5) for _ in range(2)]
    ended = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    codes = sorted(code for _, _, code in ended)
    assert codes == [0, 2], ended
    loser = next(err for _, err, code in ended if code == 2)
    assert "is being written by" in loser and "lease" in loser
    assert "Traceback" not in loser
    ids = bucket_results().column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(set(ids)) == 40


def test_two_shards_of_an_array_started_together_on_a_new_s3_output_both_run(s3, tmp_path):
    rows = news_rows(40)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out", "batch_size": 4})
    # each finds no job.json in the bucket and creates one: the later adopts the first's (same job)
    procs = [start_run(job, "--shard", f"{i}/2", per_poll=2, latency_s=0.1) for i in range(2)]
    ended = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [code for _, _, code in ended] == [0, 0], ended
    ids = bucket_results().column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(set(ids)) == 40
    recorded = json.loads(s3.get_object(Bucket=BUCKET, Key="out/job.json")["Body"].read())
    owners = {json.loads(f.metadata[b"batch_runner"])["output_id"]
              for f in (pq.ParquetFile(bucket_dataset().filesystem.open_input_file(p)).schema_arrow
                        for p in bucket_dataset().files)}
    assert owners == {recorded["output_id"]}  # every part names the one job.json in the bucket


def test_a_lease_taken_over_stops_its_holder_at_its_next_write(s3, tmp_path, monkeypatch):
    from batch_runner import storage
    from batch_runner.errors import StorageError

    monkeypatch.setattr(storage, "LEASE_TTL_S", 6.0)  # renewed every second
    copy = storage.OutputCopy(f"s3://{BUCKET}/out", tmp_path)
    lease = storage.Lease(copy, "0000-of-0001")
    lease.acquire()
    try:
        lease.check()
        s3.put_object(Bucket=BUCKET, Key="out/_locks/0000-of-0001.lease", Body=b'{"host": "elsewhere"}')
        deadline = time.monotonic() + 3  # half the TTL: the old limit of 0.9 x TTL would still allow writes
        while not getattr(lease, "lost", False) and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(StorageError, match="another run took over shard 0000-of-0001"):
            lease.check()
    finally:
        lease.release()
    assert json.loads(s3.get_object(Bucket=BUCKET, Key="out/_locks/0000-of-0001.lease")["Body"].read()) == \
        {"host": "elsewhere"}  # the new holder's lease is left alone


def test_a_run_whose_lease_is_taken_over_mid_run_exits_1_and_a_rerun_runs_the_rest(s3, cli, fake, tmp_path):
    rows = news_rows(40)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out", "batch_size": 4})
    proc = start_run(job, per_poll=1, latency_s=0.2)
    wait_for_objects(s3, "out/results/", 2, proc)
    taken = {"host": "elsewhere", "pid": 1, "ttl_s": 1, "expires": time.time() + 1}  # expires at once
    s3.put_object(Bucket=BUCKET, Key="out/_locks/0000-of-0001.lease", Body=json.dumps(taken).encode())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "another run took over shard 0000-of-0001" in err and "Traceback" not in err
    done = bucket_results().num_rows
    assert done < 40  # stopped within a renewal's interval, long before the end
    engine = fake()
    resumed = cli("run", job)  # the "other run" is gone: its lease expired; this one takes it over
    assert resumed.exit_code == 0, resumed.output
    assert len(engine.submitted) == 40 - done
    ids = bucket_results().column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(set(ids)) == 40


def test_a_holder_not_renewed_for_half_the_ttl_stops_writing(s3, tmp_path):
    from batch_runner import storage
    from batch_runner.errors import StorageError

    lease = storage.Lease(storage.OutputCopy(f"s3://{BUCKET}/out", tmp_path), "0000-of-0001")
    lease.renewed = time.monotonic() - storage.LEASE_TTL_S * 0.6
    with pytest.raises(StorageError, match="the lease was not renewed for"):
        lease.check()


def test_an_array_of_another_size_is_refused_on_an_s3_output(s3, cli, fake, tmp_path, monkeypatch):
    url = put_jsonl(s3, "in/news.jsonl", news_rows(6))
    fake()
    job = write_job(tmp_path, input={"path": url}, output={"dir": f"s3://{BUCKET}/out"})
    monkeypatch.setenv("BATCH_TASK_INDEX", "0")
    monkeypatch.setenv("BATCH_TASK_COUNT", "3")
    assert cli("run", job).exit_code == 0
    monkeypatch.setenv("BATCH_TASK_COUNT", "2")
    refused = cli("run", job)
    assert refused.exit_code == 2
    assert "BATCH_TASK_COUNT=2: this output was split into 3 array tasks by its first run" in refused.output


def test_status_merge_report_and_the_api_work_on_an_s3_output(s3, cli, fake, tmp_path):
    import batch_runner

    rows = news_rows(16)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    out = f"s3://{BUCKET}/out"
    fake()
    job = write_job(tmp_path, input={"path": url}, output={"dir": out, "batch_size": 4})
    for shard in ("0/2", "1/2"):
        assert cli("run", job, "--shard", shard).exit_code == 0

    status = cli("status", out)
    assert status.exit_code == 0, status.output
    assert "2/2 shards complete, 16 rows" in status.output
    merged = cli("merge", out)
    assert merged.exit_code == 0, merged.output
    assert f"merged 16 rows into {out}/merged/results.parquet" in merged.output
    assert {"merged/results.parquet", "merged/stats.parquet"} <= set(keys(s3, "out/"))
    report = cli("report", out)
    assert report.exit_code == 0, report.output
    assert f"{out}/report/index.html" in report.output and "/tmp/" not in report.output
    assert "report/index.html" in keys(s3, "out/")
    page = s3.get_object(Bucket=BUCKET, Key="out/report/index.html")["Body"].read().decode()
    assert f"from {out}." in page and "/tmp/" not in page

    api = f"s3://{BUCKET}/api"
    found = batch_runner.run(job, output_dir=api, progress=False)
    assert sorted(found["id"]) == sorted(r["id"] for r in rows)
    assert "job.json" in keys(s3, "api/")
    assert list(batch_runner.run(job, output_dir=api, progress=False)["id"]) == list(found["id"])  # resumed


def test_status_on_an_s3_output_shows_a_shard_with_a_live_lease_as_running(s3, cli, fake, tmp_path):
    url = put_jsonl(s3, "in/news.jsonl", news_rows(8))
    out = f"s3://{BUCKET}/out"
    fake()
    job = write_job(tmp_path, input={"path": url}, output={"dir": out})
    assert cli("run", job, "--shard", "0/2").exit_code == 0
    lease = {"host": "elsewhere", "pid": 1, "ttl_s": 60, "expires": time.time() + 60}
    s3.put_object(Bucket=BUCKET, Key="out/_locks/0001-of-0002.lease", Body=json.dumps(lease).encode())
    status = cli("status", out)
    assert status.exit_code == 1
    assert "0001-of-0002  running" in status.output
    refused = cli("merge", out)
    assert refused.exit_code == 2
    assert f"{out}: shards not complete: 1; running now: 1" in refused.output
    assert not any(k.startswith("merged/") for k in keys(s3, "out/"))


@pytest.mark.engine
def test_the_quick_start_job_with_its_input_and_output_in_s3(s3, cli, tmp_path):
    """The Quick start's job on the real engine (vLLM's CPU build, the embedded model), a few rows."""
    rows = news_rows(8)
    url = put_jsonl(s3, "in/news.jsonl", rows)
    out = f"s3://{BUCKET}/summarize"
    job = write_job(tmp_path, input={"path": url}, sampling={"max_tokens": 16}, output={"batch_size": 4})
    result = cli("run", job, "--output", out)
    assert result.exit_code == 0, result.output
    table = bucket_results("summarize")
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    assert all(text.strip() for text in table.column("output").to_pylist())
    assert cli("status", out).exit_code == 0


@pytest.mark.parametrize("where", ["input", "output"])
def test_an_unreachable_endpoint_is_one_clear_message(s3, cli, fake, tmp_path, monkeypatch, where):
    local = tmp_path / "in.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in news_rows(4)))
    fake()
    url = f"s3://{BUCKET}/{where}"
    job = write_job(tmp_path, input={"path": url + "/news.jsonl" if where == "input" else str(local)},
                    output={"dir": url if where == "output" else str(tmp_path / "out")})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there (the discard port)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    result = cli("run", job)
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    assert f"{url}" in result.output
    assert not (tmp_path / "out").exists()
