"""Throughput over a run, from batch-run's engine timeline: python bench/chart.py OUT.png TIMELINE...

Plots output tokens generated against time, interval by interval: the slope is the throughput.
(Charts made before the timeline existed, from per-batch stats, are in docs/ as they were.)
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main(out: str, paths: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    for path in paths:
        df = pd.read_parquet(path).sort_values("finished_at")
        t = df["interval_s"].cumsum()
        label = Path(path).stem.removeprefix("timeline-")
        rate = df["output_tokens"].sum() / df["interval_s"].sum()
        ax.plot([0, *t], [0, *df["output_tokens"].cumsum()], marker=".", label=f"{label}: {rate:,.0f} output tok/s")
    ax.set_xlabel("seconds since generation started")
    ax.set_ylabel("output tokens generated")
    ax.set_title("batch-run on one H100, Mistral-7B shape (dummy weights), vLLM 0.26.0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
