"""Progress for people and for log files: the one renderer that every executor feeds.

A shard's own run feeds it the committer's events: on a terminal a tqdm bar over rows with live
tokens/s; elsewhere (cron, Slurm output files) one line per committed batch, as plain text or as
JSON lines. Executors feed it their own lines: where the shards run, their combined progress, how a
worker or task ended. Every line goes through ``logging`` (the ``batch_runner.progress`` logger, on
stderr as it is at the time, the text as it is: a JSON line stays a JSON line); it is shown at every
verbosity, as progress always was.
"""

from __future__ import annotations

import json
import logging
import sys

from ..logs import StderrHandler
from ..records import ProgressEvent

log = logging.getLogger("batch_runner.progress")


def _ready() -> logging.Logger:
    """The progress logger, given its own handler once: the text without the ``batch-run:`` prefix
    that batch-runner's other messages get (progress lines and JSON lines carry their own)."""
    if not log.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
        log.setLevel(logging.INFO)
    return log


def say(text: str) -> None:
    """One line from an executor: ``batch-run: TEXT``."""
    _ready().info("batch-run: %s", text)


def _line(text: str) -> None:
    _ready().info("%s", text)


class Progress:
    """The renderer: a listener of one shard's events, and the combined lines of several shards."""

    def __init__(self, log_format: str, label: str):
        self.log_format, self.label = log_format, label
        self.bar = None

    def __call__(self, e: ProgressEvent) -> None:
        if e.kind == "start":
            self._start(e)
        elif e.kind == "batch":
            self._batch(e)

    def _start(self, e: ProgressEvent) -> None:
        if sys.stderr.isatty() and self.log_format == "text":
            from tqdm import tqdm

            self.bar = tqdm(total=e.rows_total, desc=self.label, unit="row", dynamic_ncols=True)
        elif self.log_format == "json":
            _line(json.dumps(e.as_dict()))

    def _batch(self, e: ProgressEvent) -> None:
        if self.bar is not None:
            self.bar.update(e.requests)
            self.bar.set_postfix(out_tok_s=f"{e.output_tok_s:,.0f}", errors=e.errors, refresh=False)
        elif self.log_format == "json":
            _line(json.dumps(e.as_dict()))
        else:
            _line(f"batch {e.batch}: {e.rows_done}/{e.rows_total} rows, {e.requests} requests, "
                  f"{e.errors} errors, run at {e.output_tok_s} output tok/s, "
                  f"cache hit {e.cache_hit_rate:.0%}")

    def engines(self, shard: str, batch: int, done: int, total: int, engines: int, tok_s: float) -> None:
        """Several engines side by side (the node executor): a batch of ``shard``, and the totals."""
        if self.log_format == "json":
            _line(json.dumps({"event": "data_parallel", "shard": shard, "batch": batch, "rows_done": done,
                              "rows_total": total, "workers": engines, "output_tok_s": round(tok_s, 1)}))
        else:
            say(f"{done}/{total} rows over {engines} engines (shard {shard} batch {batch}), "
                f"{tok_s:,.0f} output tok/s")

    def committed(self, rows: int, running: int, shards: int) -> None:
        """Shards elsewhere (Ray): the rows committed so far, read from the output."""
        say(f"{rows} rows committed, {running} of {shards} shards still running")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
