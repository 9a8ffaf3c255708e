"""The docs: the job-file reference matches the spec, every command has help and a line in the README,
the README's Quick start is what CI runs, and every link between the pages leads somewhere."""

import re

import pytest
from click.testing import CliRunner
from conftest import ROOT

from batch_runner import config_doc
from batch_runner.cli import main
from batch_runner.config import JobSpec

README = (ROOT / "README.md").read_text()
JOB_FILE_DOC = ROOT / "docs" / "job-file.md"
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            yield from _keys(ann, f"{name}.")
        else:
            yield prefix + name


def test_job_file_reference_is_current():
    assert JOB_FILE_DOC.read_text() == config_doc.render(), (
        "docs/job-file.md is stale: regenerate it with `.venv/bin/python -m batch_runner.config_doc > docs/job-file.md`")


@pytest.mark.parametrize("key", sorted(_keys(JobSpec)))
def test_every_job_key_is_documented(key):
    assert f"`{key}`" in JOB_FILE_DOC.read_text(), f"docs/job-file.md lacks `{key}`"


@pytest.mark.parametrize("key", sorted(_keys(JobSpec)))
def test_every_job_key_has_a_description(key):
    section, _, name = key.rpartition(".")
    model = JobSpec.model_fields[section].annotation if section else JobSpec
    assert model.model_fields[name].description, f"config.py: `{key}` has no description for docs/job-file.md"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert main.commands[command].help and len(main.commands[command].help) > 20


@pytest.mark.parametrize("command", sorted(set(main.commands) - {"run"}))
def test_every_command_is_in_the_readme(command):
    assert f"batch-run {command} " in README, f"README's Commands lack `batch-run {command}`"


def test_quick_start_has_exactly_two_commands():
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", README, re.DOTALL).group(1)
    assert len([line for line in block.splitlines() if line.strip()]) == 2
    assert (ROOT / ".ci" / "run").read_text().strip().endswith(block.splitlines()[1].strip())


def test_readme_stays_a_front_door():
    assert len(README.splitlines()) <= 220


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_local_links_resolve(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_local_anchors_resolve(page):
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
        linked = (page.parent / target) if target else page
        headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.MULTILINE)
        slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
        assert anchor in slugs, f"{page.relative_to(ROOT)}: no heading for #{anchor} in {linked.relative_to(ROOT)}"
