"""What a run trusts in its output folder: regression tests of issue 25 (items 1, 4, 5, 10).

A resumed run verifies the input's content, not its size; parts batch-run did not write for this
output are refused, never counted as done; --fresh acts only after every check; a busy output is
refused before the pre-flight. Through the CLI in-process, with the fake engine.
"""

import hashlib
import json

import pytest

from batch_runner.checkpoint import OutputLock
from conftest import news_rows, write_job, write_jsonl


def snapshot(folder) -> dict:
    """Every file under folder (links too, not followed) with its bytes' digest: what 'unchanged' means."""
    return {str(p.relative_to(folder)): (p.is_symlink(), hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


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
    "engine.extra key vLLM lacks": (["--set", "engine.extra.bogus_key=1"], "engine.extra.bogus_key"),
    "engine.extra key vLLM lacks, data_parallel": (["--set", "engine.extra.bogus_key=1",
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
