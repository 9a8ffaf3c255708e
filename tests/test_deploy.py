"""The files under deploy/ are what their schedulers accept, and their arrays run the job as batch-run
reads them: each file is parsed with the scheduler's own client models (kubernetes, botocore,
google-cloud-batch: an unknown or misspelt key fails), then its array is run index by index with the
variables that scheduler sets (fake engine): every id exactly once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from botocore.session import get_session
from botocore.validate import validate_parameters
from conftest import ROOT, news_rows, write_job, write_jsonl
from google.cloud import batch_v1
from kubernetes.client import ApiClient

from batch_runner.executors.indexed import SCHEDULERS
from batch_runner.runner.stop import STOP_GRACE_S

DEPLOY = ROOT / "deploy"
K8S, AWS_JOB, AWS_DEFINITION, GCP = (DEPLOY / name for name in (
    "kubernetes-indexed-job.yaml", "aws-batch-array-job.json", "aws-batch-job-definition.json", "gcp-batch-job.json"))
ROWS = 12


class _Response:  # what ApiClient.deserialize reads: a response's body
    def __init__(self, data: dict):
        self.data = json.dumps(data)


def kubernetes_job():
    data = yaml.safe_load(K8S.read_text())
    return data, ApiClient().deserialize(_Response(data), "V1Job")


def aws_requests() -> tuple[dict, dict]:
    """The SubmitJob and RegisterJobDefinition requests, checked against AWS Batch's API model."""
    model = get_session().get_service_model("batch")
    submit, definition = json.loads(AWS_JOB.read_text()), json.loads(AWS_DEFINITION.read_text())
    validate_parameters(submit, model.operation_model("SubmitJob").input_shape)
    validate_parameters(definition, model.operation_model("RegisterJobDefinition").input_shape)
    return submit, definition


def gcp_job() -> batch_v1.Job:
    return batch_v1.Job.from_json(GCP.read_text())  # json_format refuses a field the Job has not


def test_the_kubernetes_manifest_is_an_indexed_job_that_sets_the_count():
    data, job = kubernetes_job()
    assert ApiClient().sanitize_for_serialization(job) == data  # nothing the models do not know, dropped
    spec, pod = job.spec, job.spec.template.spec
    assert (job.api_version, job.kind, spec.completion_mode) == ("batch/v1", "Job", "Indexed")
    (container,) = pod.containers
    env = {e.name: e.value for e in container.env}
    assert env[SCHEDULERS["kubernetes"].count_var] == str(spec.completions)  # the count batch-run reads
    assert container.command[0] == "batch-run" and container.command[1].endswith(".yaml")
    assert pod.restart_policy == "Never" and pod.termination_grace_period_seconds > STOP_GRACE_S
    (no_retry,) = [r for r in spec.pod_failure_policy.rules if r.action == "FailIndex"]
    assert no_retry.on_exit_codes.values == [2, 3] and no_retry.on_exit_codes.operator == "In"


def test_the_aws_batch_requests_are_valid_and_run_batch_run():
    submit, definition = aws_requests()
    assert submit["jobDefinition"] == definition["jobDefinitionName"]
    assert submit["arrayProperties"]["size"] >= 2
    command = definition["containerProperties"]["command"]
    assert command[0] == "batch-run" and command[1].endswith(".yaml")
    assert not [e for e in definition["containerProperties"].get("environment", [])
                if e["name"].startswith("AWS_BATCH_")]  # AWS Batch's own prefix: refused there
    no_retry = {r["onExitCode"] for r in definition["retryStrategy"]["evaluateOnExit"] if r["action"] == "EXIT"}
    assert no_retry == {"2", "3"}


def test_the_google_cloud_batch_job_is_valid_and_runs_batch_run():
    (group,) = gcp_job().task_groups
    assert group.task_count >= 2
    (runnable,) = group.task_spec.runnables
    assert runnable.container.entrypoint == "batch-run" and runnable.container.commands[0].endswith(".yaml")
    (volume,) = group.task_spec.volumes
    assert any(v.startswith(f"{volume.mount_path}:") for v in runnable.container.volumes)
    (no_retry,) = group.task_spec.lifecycle_policies
    assert no_retry.action == batch_v1.LifecyclePolicy.Action.FAIL_TASK
    assert list(no_retry.action_condition.exit_codes) == [2, 3]


def array_tasks(kind: str) -> tuple[list[str], list[dict[str, str]]]:
    """The file's batch-run arguments, and the variables each task of its array gets."""
    s = SCHEDULERS[kind]
    if kind == "kubernetes":
        _, job = kubernetes_job()
        (container,) = job.spec.template.spec.containers
        env = {e.name: e.value for e in container.env}
        return container.command[1:], [{**env, s.index_var: str(i)} for i in range(job.spec.completions)]
    if kind == "aws_batch":
        submit, definition = aws_requests()
        size = submit["arrayProperties"]["size"]
        return definition["containerProperties"]["command"][1:], [{s.index_var: str(i), s.count_var: str(size)}
                                                                 for i in range(size)]
    (group,) = gcp_job().task_groups
    return list(group.task_spec.runnables[0].container.commands), [
        {s.index_var: str(i), s.count_var: str(group.task_count)} for i in range(group.task_count)]


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_each_files_array_runs_every_row_once(cli, fake, tmp_path, monkeypatch, kind):
    for var in (v for s in SCHEDULERS.values() for v in (s.index_var, s.count_var)):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    fake()
    rows = write_jsonl(tmp_path / "in.jsonl", news_rows(ROWS))
    job = write_job(tmp_path, input={"path": str(rows)}, output={"batch_size": 4})
    args, tasks = array_tasks(kind)
    assert len(args) == 1  # the job file alone: replaced by this test's
    for env in reversed(tasks):  # the scheduler starts them in any order
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        result = cli("run", job)
        assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert cli("status", out).exit_code == 0
    assert json.loads((out / "job.json").read_text())["fingerprint"]["shards"] == len(tasks)
    assert cli("merge", out).exit_code == 0
    merged = pd.read_parquet(out / "merged" / "results.parquet")
    assert sorted(merged["id"]) == sorted(r["id"] for r in news_rows(ROWS)) and merged["id"].is_unique
