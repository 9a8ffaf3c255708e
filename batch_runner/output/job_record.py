"""``job.json``: what an output's results were made by, written once when the output is created and
read back, by every reader (resume, status, report, api), through ``JobRecord.load``.

Records written by earlier batch-runs still load: a key they lack is None (they predate it), and an
option their job has that this version no longer knows is left out of ``spec``. A value of the wrong
type is an error naming the file: a hand-edited or foreign job.json is never guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..config import JobSpec
from ..errors import JobError

JOB_FILE = "job.json"


@dataclass
class JobRecord:
    """One output's job.json; each key as it is written there (None: an older batch-run wrote none)."""

    fingerprint_hash: str | None = None  # resume.fingerprint_hash of ``fingerprint``
    fingerprint: dict[str, Any] | None = None  # what determines the results (resume.fingerprint)
    kept_schema: list[list[str]] | None = None  # the kept columns' [name, Arrow type] pairs
    job: dict[str, Any] | None = None  # the effective job, as JobSpec's JSON
    output_id: str | None = None  # names this output in every part's footer (ownership.py)
    input_blocks: dict[str, Any] | None = None  # the input's block digests (digest.InputContent.blocks)
    path: Path | None = field(default=None, repr=False, compare=False)  # where it was read (messages); not written

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, keys in their written order, a key no older record had left out."""
        return {name: getattr(self, name) for name in _WRITTEN if getattr(self, name) is not None}

    @property
    def shards(self) -> int:
        """The shard count the output was split into by its first run."""
        return int((self.fingerprint or {})["shards"])

    @property
    def data_parallel(self) -> int:
        """The engines per array task that wrote the output: executor.data_parallel, or
        engine.data_parallel in the record of a batch-run from before the key moved."""
        job = self.job or {}
        dp = (job.get("executor") or {}).get("data_parallel", (job.get("engine") or {}).get("data_parallel", 1))
        return dp if isinstance(dp, int) and dp > 0 else 1

    @property
    def executor_kind(self) -> str:
        """The executor that created the output, as its job says (a cloud scheduler's array records its
        own name even when chosen by ``auto``; "auto" otherwise, and in a record that predates the key)."""
        kind = ((self.job or {}).get("executor") or {}).get("kind", "auto")
        return kind if isinstance(kind, str) else "auto"

    @cached_property
    def spec(self) -> JobSpec | None:
        """The recorded job as a ``JobSpec`` (None: the record has none); raises JobError where it
        does not validate as one."""
        return None if self.job is None else job_spec(self.job, self.path)

    @classmethod
    def load(cls, out: Path) -> JobRecord | None:
        """The output's job.json, or None for a new output (no job.json yet)."""
        path = out / JOB_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return cls.parse(text, path)

    @classmethod
    def require(cls, out: Path) -> JobRecord:
        """The output's job.json; a folder without one is not a batch-run output."""
        record = cls.load(out)
        if record is None:
            raise JobError(f"{out}: not a batch-run output (no job.json)")
        return record

    @classmethod
    def parse(cls, text: str, path: Path) -> JobRecord:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise JobError(f"{path}: not valid JSON ({e}); it is not a batch-run job record") from e
        if not isinstance(data, dict):
            raise JobError(f"{path}: not a JSON object; it is not a batch-run job record")
        try:  # keys a later batch-run may add are not this version's to judge
            record = TypeAdapter(cls).validate_python({k: v for k, v in data.items() if k in _WRITTEN})
        except ValidationError as e:
            raise JobError(f"{path}: {_problem(e)}; this job.json was not written by batch-run "
                           "(or was changed by hand)") from None
        record.path = path
        return record


def _problem(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}"


def job_spec(job: dict[str, Any], path: Path | None) -> JobSpec:
    """A recorded job back into a ``JobSpec``: options this version does not know are dropped (an older
    batch-run had them), anything else that does not validate is an error naming the file."""
    data = _old_data_parallel_moved(json.loads(json.dumps(job)))
    for _ in range(8):  # each round drops the unknown keys pydantic reported
        try:
            return JobSpec.model_validate(data)
        except ValidationError as e:
            unknown = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
            if not unknown or len(unknown) != len(e.errors()):
                raise JobError(f"{path or JOB_FILE}: the recorded job does not validate: {_problem(e)}") from None
            for loc in unknown:
                _drop(data, loc)
    raise JobError(f"{path or JOB_FILE}: the recorded job does not validate")


def _old_data_parallel_moved(job: dict[str, Any]) -> dict[str, Any]:
    """A record written before executor.data_parallel existed has engine.data_parallel: moved here,
    quietly (the job file's note is for the person who wrote the key, not for every report of an output)."""
    engine, executor = job.get("engine"), job.get("executor")
    if isinstance(engine, dict) and "data_parallel" in engine and isinstance(executor, dict | None):
        job["executor"] = {**(executor or {}), "data_parallel": engine.pop("data_parallel")}
    return job



def _drop(data: dict[str, Any], loc: tuple) -> None:
    *parents, key = loc
    for part in parents:
        data = data[part]
    data.pop(key, None)


_WRITTEN = [f.name for f in fields(JobRecord) if f.name != "path"]  # job.json's keys, in order
