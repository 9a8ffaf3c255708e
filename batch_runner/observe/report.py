"""``batch-run report``: a finished (or running) output at a glance, as text, HTML and PNG charts.

Everything comes from the output directory itself: the stats parts (one row per batch), the engine
timeline (one row per interval of generation), three columns of the result parts, the shard markers
and the summaries. Throughput is one definition throughout (stats.rate): committed tokens over the
generation time that the timeline's intervals tile. The HTML page is one file with
its charts inlined, so it can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from ..atomic import atomic_write
from ..config import JobSpec
from ..output.job_record import JobRecord
from ..output.parts import committed_parts
from ..output.resume import output_locked
from ..output.status import ShardState, shard_states
from ..records import EngineFailure, Summary
from .stats import rate

CHARTS = ("throughput", "cache_hit", "output_tokens", "outcomes")


@dataclass
class Report:
    out: Path | str  # the folder, or the URL of an output in object storage
    job: JobSpec | None  # the output's recorded job (job.json)
    shards: list[ShardState]
    running: list[str]
    stats: Any  # pandas DataFrame, one row per committed batch
    results: Any  # pandas DataFrame: output_tokens, error_code, finish_reason
    timeline: Any  # pandas DataFrame, one row per interval of generation (may be empty)
    failures: list[EngineFailure] = field(default_factory=list)  # of the engine, in each shard's latest run

    def generation_s(self, shard: str | None = None) -> float:
        """Engine-seconds of generation: the timeline's intervals (shards side by side add up)."""
        t = self.timeline
        if shard is not None and len(t):
            t = t[t["shard"] == shard]
        return float(t["interval_s"].sum()) if len(t) else 0.0

    @property
    def t0(self):
        """When the output's first batch was submitted (across runs and shards)."""
        starts = [self.stats["submitted_at"].min()]
        if len(self.timeline):
            starts.append(self.timeline["started_at"].min())
        return min(starts)

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        done = sum(s.state == "complete" for s in self.shards)
        return "complete" if done == len(self.shards) else "partial" if done or len(self.results) else "not started"


def _table(folder: Path, columns: list[str] | None = None):
    parts = committed_parts(folder)
    if not parts:
        return None
    return ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=columns).to_pandas()


def load(out: Path) -> Report:
    import pandas as pd

    job = JobRecord.require(out).spec
    shards = shard_states(out)
    running = [s.shard.label for s in shards if output_locked(out, s.shard.label)]
    stats = _table(out / "stats")
    timeline = _table(out / "timeline")
    results = _table(out / "results", ["output_tokens", "error_code", "finish_reason"])
    empty = pd.DataFrame({"output_tokens": [], "error_code": [], "finish_reason": []})
    return Report(out, job, shards, running, stats if stats is not None else pd.DataFrame(),
                  results if results is not None else empty, timeline if timeline is not None else pd.DataFrame(),
                  _engine_failures(out, shards))


def _engine_failures(out: Path, shards: list[ShardState]) -> list[EngineFailure]:
    """The engine's failures in each shard's latest run, from its summary (where it wrote one)."""
    names = ["summary.json"] if len(shards) == 1 else [f"summary-{s.shard.label}.json" for s in shards]
    return [f for name in names if (s := Summary.load(out / name)) for f in s.engine_failures or ()]


# -- numbers ---------------------------------------------------------------------------------------
def figures(r: Report) -> dict[str, Any]:
    s, res = r.stats, r.results
    expected = [x.expected for x in r.shards]
    f: dict[str, Any] = {
        "state": r.state, "shards_complete": sum(x.state == "complete" for x in r.shards), "shards": len(r.shards),
        "rows": len(res), "rows_expected": sum(expected) if all(e is not None for e in expected) else None,
        "errors_by_code": res["error_code"].dropna().value_counts().to_dict(),
    }
    f["errors"] = sum(f["errors_by_code"].values())
    if s.empty:
        return f
    gen = r.generation_s()
    start, end = s["submitted_at"].min(), s["finished_at"].max()
    f.update(
        prompt_tokens=int(s["prompt_tokens"].sum()), cached_prompt_tokens=int(s["cached_prompt_tokens"].sum()),
        output_tokens=int(s["output_tokens"].sum()), generation_s=gen, batches=len(s), runs=s["run_id"].nunique(),
        first_batch=start, last_batch=end, span_s=(end - start).total_seconds(),
        gpu_memory_peak_gb=_max(s, "gpu_memory_peak_gb"), gpu_utilization_mean=_mean(s, "gpu_utilization"))
    f["cache_hit_rate"] = rate(f["cached_prompt_tokens"], f["prompt_tokens"])
    f["output_tok_s"] = rate(f["output_tokens"], gen)
    f["total_tok_s"] = rate(f["prompt_tokens"] + f["output_tokens"], gen)
    f["requests_s"] = rate(int(s["requests"].sum()), gen)
    return f


def _max(df, col) -> float | None:
    v = df[col].max() if col in df else None
    return None if v is None or v != v else float(v)


def _mean(df, col) -> float | None:
    v = df[col].mean() if col in df else None
    return None if v is None or v != v else float(v)


def per_shard(r: Report) -> list[dict[str, Any]]:
    rows = []
    for sh in r.shards:
        part = r.stats[r.stats["shard"] == sh.shard.label] if not r.stats.empty else r.stats
        gen = r.generation_s(sh.shard.label)
        state = "running" if sh.shard.label in r.running else sh.state
        rows.append({"shard": sh.shard.label, "state": state, "rows": sh.rows, "expected": sh.expected,
                     "errors": sh.errors, "output_tok_s": rate(float(part["output_tokens"].sum()), gen) if gen else None})
    return rows


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def summary_lines(r: Report, f: dict[str, Any]) -> list[tuple[str, str]]:
    name, model = (r.job.name, r.job.model.name) if r.job is not None else ("?", "?")
    rows = f"{f['rows']:,}" + (f"/{f['rows_expected']:,}" if f["rows_expected"] is not None else "") + " written"
    errors = ", ".join(f"{code} {n:,}" for code, n in sorted(f["errors_by_code"].items())) or "none"
    lines = [("output", str(r.out)), ("job", f"{name} (model {model})"),
             ("state", f"{f['state']}: {f['shards_complete']}/{f['shards']} shards complete"
              + (f", running now: {', '.join(r.running)}" if r.running else "")),
             ("rows", rows), ("errors", f"{f['errors']:,} row{'s' if f['errors'] != 1 else ''}: {errors}" if f["errors"] else "none")]
    if "output_tokens" not in f:
        return lines + [("batches", "none committed yet")]
    gpu = "no GPU (CPU run)" if f["gpu_memory_peak_gb"] is None else \
        f"peak {f['gpu_memory_peak_gb']:.1f} GB, mean utilisation {f['gpu_utilization_mean']:.0f}%"
    return lines + [
        ("tokens", f"prompt {f['prompt_tokens']:,} ({f['cache_hit_rate']:.1%} from the prefix cache), "
                   f"output {f['output_tokens']:,}"),
        ("throughput", f"{f['output_tok_s']:,.1f} output tok/s, {f['total_tok_s']:,.1f} total tok/s, "
                       f"{f['requests_s']:,.2f} req/s per engine"),
        ("duration", f"{_duration(f['generation_s'])} of generation in {f['batches']} batches over {f['runs']} run(s); "
                     f"{f['first_batch']:%Y-%m-%d %H:%M} to {f['last_batch']:%Y-%m-%d %H:%M} UTC"),
        ("GPU memory", gpu)] + _restarts_line(r)


def _restarts_line(r: Report) -> list[tuple[str, str]]:
    """The engine restarts of the latest runs, where there were any (a row quarantined by one is an error row)."""
    if not r.failures:
        return []
    n = len(r.failures)
    return [("engine", f"failed {n} time{'s' if n > 1 else ''} in the latest runs (restarted, up to engine.max_restarts); "
                       f"last: {r.failures[-1].cause}")]


def text(r: Report, f: dict[str, Any]) -> str:
    out = [f"{k:>12}  {v}" for k, v in summary_lines(r, f)]
    if len(r.shards) > 1:
        out += ["", f"{'shard':>12}  {'state':<9} {'rows':>9} {'errors':>7} {'out tok/s':>10}"]
        for s in per_shard(r):
            tok = f"{s['output_tok_s']:,.1f}" if s["output_tok_s"] is not None else "-"
            out.append(f"{s['shard']:>12}  {s['state']:<9} {s['rows']:>9,} {s['errors']:>7,} {tok:>10}")
    return "\n".join(out)


# -- charts ------------------------------------------------------------------------------------------
def charts(r: Report, folder: Path) -> dict[str, Path]:
    """The four charts as PNG files in ``folder``; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {"throughput": _throughput, "cache_hit": _cache_hit, "output_tokens": _lengths, "outcomes": _outcomes}
    paths = {}
    for name in CHARTS:
        fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
        drawn[name](r, ax)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"{name}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths[name] = path
    return paths


def _by_shard(r: Report):
    s = r.stats.sort_values("finished_at") if not r.stats.empty else r.stats
    return [(label, s[s["shard"] == label]) for label in sorted(s["shard"].unique())] if len(s) else []


def _elapsed(r: Report, s):
    """Seconds since the output's first batch was submitted (across runs and shards)."""
    return (s["finished_at"] - r.t0).dt.total_seconds()


def _throughput(r: Report, ax) -> None:
    # From the engine timeline: tokens as the engine generated them, interval by interval (batches
    # finish in waves, so tokens committed per batch would show steps, not the engine's pace).
    t = r.timeline.sort_values("finished_at") if len(r.timeline) else r.timeline
    for label in sorted(t["shard"].unique()) if len(t) else []:
        s = t[t["shard"] == label]
        pace = rate(float(s["output_tokens"].sum()), float(s["interval_s"].sum()))
        start = (s["started_at"].min() - r.t0).total_seconds()
        x, y = [start, *_elapsed(r, s)], [0, *s["output_tokens"].cumsum()]  # from zero at the shard's start
        ax.plot(x, y, marker="o", ms=2, label=f"{label}: {pace:,.1f} tok/s")
    ax.set_title("Output tokens generated over time (engine timeline; slope = throughput)")
    ax.set_ylabel("output tokens")
    _time_axis(r, ax)


def _cache_hit(r: Report, ax) -> None:
    for label, s in _by_shard(r):
        ax.plot(_elapsed(r, s), 100 * s["cache_hit_rate"], marker="o", ms=3, label=label)
    ax.set_title("Prefix cache hit rate per batch")
    ax.set_ylabel("% of prompt tokens")
    ax.set_ylim(0, 100)
    _time_axis(r, ax)


def _time_axis(r: Report, ax) -> None:
    ax.set_xlabel("seconds since the first batch was submitted")
    if len(r.stats):
        ax.legend(fontsize=7, title="shard" if len(r.shards) > 1 else None, title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no batches committed yet", ha="center", transform=ax.transAxes)


def _lengths(r: Report, ax) -> None:
    lengths = r.results.loc[r.results["error_code"].isna(), "output_tokens"].dropna()
    ax.hist(lengths, bins=min(40, max(5, lengths.nunique())), color="#4c72b0")
    ax.set_title(f"Output length of {len(lengths):,} answered rows")
    ax.set_xlabel("output tokens")
    ax.set_ylabel("rows")


def _outcomes(r: Report, ax) -> None:
    res = r.results
    answered = res[res["error_code"].isna()]
    counts = {f"finished: {k}": int(v) for k, v in answered["finish_reason"].value_counts().items()}
    counts |= {f"error: {k}": int(v) for k, v in res["error_code"].dropna().value_counts().items()}
    names = list(counts) or ["no rows yet"]
    colors = ["#c44e52" if n.startswith("error") else "#55a868" for n in names]
    bars = ax.barh(names, [counts.get(n, 0) for n in names], color=colors)
    ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    errors = sum(v for k, v in counts.items() if k.startswith("error"))
    ax.set_title(f"Rows by outcome: {errors:,} error{'s' if errors != 1 else ''}" if errors else "Rows by outcome: no errors")
    ax.set_xlabel("rows")
    ax.invert_yaxis()


# -- HTML ----------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:20px}table{border-collapse:collapse;margin:8px 0 20px}td,th{padding:4px 10px;border-bottom:1px solid #ddd;
text-align:left}th{background:#f4f4f4}.k{color:#555;font-weight:600}.grid{display:grid;
grid-template-columns:1fr 1fr;gap:12px}img{width:100%;border:1px solid #e4e4e4}.state-complete{color:#2a7a3a}
.state-running{color:#a06000}.state-partial,.state-missing{color:#b02a2a}"""


def page(r: Report, f: dict[str, Any], pngs: dict[str, Path]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td class=k>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary_lines(r, f))
    shard_rows = "".join(_shard_row(s) for s in per_shard(r))
    imgs = "".join(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   for name, p in pngs.items())
    made = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    name = r.job.name if r.job is not None else ""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>batch-run report: {esc(name)}"
            f"</title><style>{_CSS}</style></head><body><h1>batch-run report: {esc(name)}</h1>"
            f"<table>{rows}</table><h2>Shards</h2><table><tr><th>shard</th><th>state</th><th>rows</th><th>errors</th>"
            f"<th>output tok/s</th></tr>{shard_rows}</table><div class=grid>{imgs}</div>"
            f"<p style='color:#777;font-size:12px'>Made {esc(made)} from {esc(str(r.out))}.</p></body></html>")


def _shard_row(s: dict[str, Any]) -> str:
    tok = "-" if s["output_tok_s"] is None else f"{s['output_tok_s']:,.1f}"
    return (f"<tr><td>{s['shard']}</td><td class=state-{s['state']}>{s['state']}</td><td>{s['rows']:,}</td>"
            f"<td>{s['errors']:,}</td><td>{tok}</td></tr>")


def write_report(out: Path, folder: Path | None = None, named: str | None = None) -> tuple[str, Path]:
    """Print-ready text; writes ``index.html`` and the PNG charts into ``folder`` (default OUT/report).
    ``named``: how the text and the page name the output (an s3:// URL, where ``out`` is its local copy)."""
    r = load(out)
    if named is not None:
        r = replace(r, out=named)
    f = figures(r)
    folder = folder or out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    pngs = charts(r, folder)
    target = folder / "index.html"
    body = page(r, f, pngs)
    atomic_write(target, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
    return text(r, f), target
