"""One PNG per run: throughput and latency percentiles of every load of every scenario."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.report import PERCENTILES, ScenarioResult


def write_png(results: list[ScenarioResult], path: Path, title: str) -> Path | None:
    rows = [(r, run) for r in results for run in r.runs if run.messages > 0]
    if not rows:
        return None
    labels = [f"{r.key}: {run.label}" for r, run in rows]
    height = max(4.0, 0.38 * len(rows) + 1.5)
    fig, (ax_rate, ax_lat) = plt.subplots(1, 2, figsize=(15, height), sharey=True)
    positions = list(range(len(rows)))

    rates = [run.rate for _, run in rows]
    bars = ax_rate.barh(positions, rates, color="tab:blue")
    for bar, (_, run) in zip(bars, rows, strict=True):
        offered = f" / {run.offered_per_s:,.0f} offered" if run.offered_per_s else ""
        ax_rate.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {run.rate:,.0f}{offered}",
            va="center",
            fontsize=7,
        )
    ax_rate.set_yticks(positions, labels, fontsize=8)
    ax_rate.invert_yaxis()
    ax_rate.set_xlabel("messages (or operations) per second")
    ax_rate.set_title("throughput")

    width = 0.8 / len(PERCENTILES)
    colors = {50: "tab:green", 95: "tab:orange", 99: "tab:red"}
    for index, pct in enumerate(PERCENTILES):
        values = [run.latency_ms.get(f"p{pct}", math.nan) for _, run in rows]
        ax_lat.barh(
            [p - 0.4 + width * (index + 0.5) for p in positions],
            [v if v and not math.isnan(v) else 0 for v in values],
            height=width,
            color=colors[pct],
            label=f"p{pct}",
        )
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("latency, ms (log scale)")
    ax_lat.set_title("latency percentiles")
    ax_lat.legend(loc="lower right", fontsize=8)
    ax_lat.grid(axis="x", which="both", alpha=0.3)

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
