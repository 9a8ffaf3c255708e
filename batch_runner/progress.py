"""Progress for people and for log files.

On a terminal: a tqdm bar over rows with live tokens/s. Elsewhere (cron, Slurm output files): one
line per committed batch on stderr, as plain text or as JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

log = logging.getLogger("batch_runner")


class Progress:
    def __init__(self, total: int, log_format: str, label: str, shard: str):
        self.log_format = log_format
        self.bar = None
        if sys.stderr.isatty() and log_format == "text":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="row", dynamic_ncols=True)
        elif log_format == "json":  # lets a reader (data_parallel's parent) know the total up front
            print(json.dumps({"event": "start", "shard": shard, "rows_total": total}), file=sys.stderr, flush=True)
        self.total = total
        self.done = 0

    def batch(self, row: dict[str, Any], run_tok_s: float) -> None:
        """A committed batch; ``run_tok_s`` is the run's pace so far (the engine timeline's)."""
        self.done += row["requests"]
        if self.bar is not None:
            self.bar.update(row["requests"])
            self.bar.set_postfix(out_tok_s=f"{run_tok_s:,.0f}", errors=row["errors"], refresh=False)
            return
        fields = {"event": "batch", "batch": row["batch"], "shard": row["shard"], "rows_done": self.done,
                  "rows_total": self.total, "requests": row["requests"], "errors": row["errors"],
                  "output_tokens": row["output_tokens"], "output_tok_s": round(run_tok_s, 1),
                  "cache_hit_rate": round(row["cache_hit_rate"], 3), "span_s": round(row["span_s"], 2)}
        if self.log_format == "json":
            print(json.dumps(fields), file=sys.stderr, flush=True)
        else:
            print(f"batch {row['batch']}: {self.done}/{self.total} rows, {row['requests']} requests, "
                  f"{row['errors']} errors, run at {fields['output_tok_s']} output tok/s, "
                  f"cache hit {fields['cache_hit_rate']:.0%}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
