"""What an operator looks at the morning after: the report (text, HTML in a real browser, PNG) and
the Prometheus textfile, from a real run with one error row."""

import os
import shutil
import subprocess

import pytest
from conftest import news_rows, write_job, write_jsonl
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.engine

ROWS = 12


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from click.testing import CliRunner

    from batch_runner.cli import main

    tmp = tmp_path_factory.mktemp("report")
    rows = news_rows(ROWS)
    del rows[3]["text"]  # one row without its column: an error row, not a failed job
    data = write_jsonl(tmp / "in.jsonl", rows)
    job = write_job(tmp, sampling={"max_tokens": 8}, output={"batch_size": 4},
                    input={"path": str(data), "id_column": "id", "keep_columns": ["title"]})
    result = CliRunner().invoke(main, ["run", str(job), "--metrics-dir", str(tmp / "textfiles")],
                                catch_exceptions=False)
    assert result.exit_code == 3, result.output
    return tmp


def metrics(path):
    return {(s.name, s.labels.get("code")): s.value
            for family in text_string_to_metric_families(path.read_text()) for s in family.samples}


def test_metrics_textfile_parses_and_tells_how_the_run_ended(finished):
    files = list((finished / "textfiles").glob("*.prom"))
    assert [f.name for f in files] == ["batch_run-summarize-0000-of-0001.prom"]
    assert not list((finished / "textfiles").glob(".*"))  # no temporary left
    m = metrics(files[0])
    assert m[("batch_run_rows", None)] == ROWS
    assert m[("batch_run_rows_done", None)] == ROWS
    assert m[("batch_run_error_rows", "missing_column")] == 1
    assert m[("batch_run_exit_status", None)] == 3
    assert m[("batch_run_running", None)] == 0
    assert m[("batch_run_output_tokens_total", None)] > 0  # the parser keeps a counter's _total name
    assert m[("batch_run_output_tokens_per_second", None)] > 0
    assert m[("batch_run_last_success_timestamp_seconds", None)] >= m[("batch_run_start_time_seconds", None)]
    families = {f.name: f for f in text_string_to_metric_families(files[0].read_text())}
    assert families["batch_run_output_tokens"].type == "counter"
    sample = families["batch_run_rows_done"].samples[0]
    assert sample.labels == {"batch_job": "summarize", "shard": "0000-of-0001"}


def test_report_text_html_and_charts(cli, finished):
    out = finished / "out"
    result = cli("report", out)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "complete: 1/1 shards complete" in text
    assert f"{ROWS}/{ROWS} written" in text
    assert "missing_column 1" in text
    assert "from the prefix cache" in text and "output tok/s" in text and "no GPU (CPU run)" in text
    report = out / "report"
    for name in ("throughput", "cache_hit", "output_tokens", "outcomes"):
        assert (report / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # self-contained: the charts are inside
    assert "http://" not in page and "https://" not in page
    assert "missing_column 1" in page


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed for this test where we may (root, apt): the main setup stays lean."""
    if not shutil.which("chromium") and shutil.which("apt-get") and os.geteuid() == 0:
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
            if subprocess.run(cmd, capture_output=True, timeout=900).returncode == 0 and shutil.which("chromium"):
                break
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed and could not be (needs root and apt)")
    return shutil.which("chromium")


def test_report_page_renders_in_a_real_browser(cli, finished, tmp_path, chromium):
    import numpy as np
    from PIL import Image

    out = finished / "out"
    assert cli("report", out).exit_code == 0
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1400", f"--screenshot={shot}", (out / "report" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (1400, 1200)
    # The charts drew: the page holds the bars' green and red, not only text on white.
    green = ((pixels[..., 1] - pixels[..., 0] > 40) & (pixels[..., 1] - pixels[..., 2] > 40)).sum()
    red = ((pixels[..., 0] - pixels[..., 1] > 60) & (pixels[..., 0] - pixels[..., 2] > 60)).sum()
    assert green > 1000 and red > 100, (green, red)
