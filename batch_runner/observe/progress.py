"""Progress for people and for log files: a listener of the committer's events.

On a terminal: a tqdm bar over rows with live tokens/s. Elsewhere (cron, Slurm output files): one
line per committed batch on stderr, as plain text or as JSON lines.
"""

from __future__ import annotations

import json
import sys

from ..records import ProgressEvent


class Progress:
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
            print(json.dumps(e.as_dict()), file=sys.stderr, flush=True)

    def _batch(self, e: ProgressEvent) -> None:
        if self.bar is not None:
            self.bar.update(e.requests)
            self.bar.set_postfix(out_tok_s=f"{e.output_tok_s:,.0f}", errors=e.errors, refresh=False)
        elif self.log_format == "json":
            print(json.dumps(e.as_dict()), file=sys.stderr, flush=True)
        else:
            print(f"batch {e.batch}: {e.rows_done}/{e.rows_total} rows, {e.requests} requests, "
                  f"{e.errors} errors, run at {e.output_tok_s} output tok/s, "
                  f"cache hit {e.cache_hit_rate:.0%}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
