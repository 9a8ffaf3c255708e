"""The README documents every job-file key and every command has help."""

import re

import pytest
from click.testing import CliRunner
from conftest import ROOT

from batch_runner.cli import main
from batch_runner.config import JobSpec

README = (ROOT / "README.md").read_text()


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            yield from _keys(ann, f"{name}.")
        else:
            yield prefix + name


@pytest.mark.parametrize("key", sorted(_keys(JobSpec)))
def test_every_job_key_is_documented(key):
    assert f"`{key}`" in README, f"README's job file reference lacks `{key}`"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert main.commands[command].help and len(main.commands[command].help) > 20


def test_quick_start_has_exactly_two_commands():
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", README, re.S).group(1)
    assert len([line for line in block.splitlines() if line.strip()]) == 2
    assert (ROOT / ".ci" / "run").read_text().strip().endswith(block.splitlines()[1].strip())
