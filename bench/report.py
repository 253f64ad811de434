"""What a scenario reports, and the three ways it is shown: a table, a JSON file, a PNG.

A scenario returns one `ScenarioResult`: its `figures` (one table row each, with the target
beside the measured value and, where it has one, the baseline from the same run and the
ratio to it) and its `runs` (throughput and latency percentiles of each load it ran, for
the plot).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Table

PERCENTILES = (50, 95, 99)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Run:
    """One load: how many messages, in how long, and their latencies (ms)."""

    label: str
    messages: int
    seconds: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    offered_per_s: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def from_latencies(
        cls, label: str, latencies_ms: list[float], seconds: float, **kwargs: Any
    ) -> Run:
        ordered = sorted(latencies_ms)
        stats = {f"p{p}": percentile(ordered, p) for p in PERCENTILES}
        if ordered:
            stats["max"] = ordered[-1]
        return cls(label, len(ordered), seconds, stats, **kwargs)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rate_per_s"] = self.rate
        return data


@dataclass
class Figure:
    """One row of the table."""

    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    baseline: str = ""  # "ratio to X" explained in words
    ratio: float | None = None


@dataclass
class ScenarioResult:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def figure(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)


def _fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit in ("ms",) and value < 10:
        return f"{value:.2f} {unit}"
    if abs(value) >= 100 or unit in ("msg/s", "conn/s", "/s", "µs"):
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def render_table(results: list[ScenarioResult], console: Console | None = None) -> None:
    console = console or Console(width=150)
    table = Table(title="Messenger benchmarks (targets are not tests)", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("scenario / figure")
    table.add_column("measured", justify="right")
    table.add_column("baseline (same run) → ratio")
    table.add_column("target")
    table.add_column("met", justify="center")
    for index, result in enumerate(results, start=1):
        head = f"[bold]{result.title}[/bold]"
        if result.error:
            table.add_row(str(index), head, "[red]failed[/red]", escape(result.error[:70]), "", "")
            continue
        table.add_row(str(index), head, "", "", "", "", end_section=not result.figures)
        for row, figure in enumerate(result.figures):
            met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[figure.met]
            ratio = escape(figure.baseline)
            if figure.ratio is not None:
                ratio += f" → {figure.ratio:.0%}"
            table.add_row(
                "",
                f"  {figure.name}",
                _fmt(figure.value, figure.unit),
                ratio,
                escape(figure.target),
                met,
                end_section=row == len(result.figures) - 1,
            )
    console.print(table)
    for result in results:
        for note in result.notes:
            console.print(f"[dim]{result.key}: {escape(note)}[/dim]")


def machine() -> dict[str, Any]:
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": list(psutil.getloadavg()),
    }


def write_json(
    results: list[ScenarioResult], directory: Path, stamp: str, options: dict[str, Any]
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    payload = {
        "started_at": stamp,
        "written_at": datetime.now(UTC).isoformat(),
        "options": options,
        "machine": machine(),
        "scenarios": [
            {
                "key": r.key,
                "title": r.title,
                "seconds": round(r.seconds, 1),
                "error": r.error,
                "figures": [asdict(f) for f in r.figures],
                "runs": [run.to_json() for run in r.runs],
                "notes": r.notes,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(_finite(payload), indent=2, default=str) + "\n")
    return path


def _finite(value: Any) -> Any:
    """NaN and infinity become null: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def markdown_table(results: list[ScenarioResult]) -> str:
    """The table as Markdown, for docs/performance.md."""
    lines = [
        "| scenario / figure | measured | baseline (same run) → ratio | target | met |",
        "|---|--:|---|---|:-:|",
    ]
    for result in results:
        if result.error:
            lines.append(f"| **{result.title}** | failed | {result.error[:80]} | | |")
            continue
        lines.append(f"| **{result.title}** | | | | |")
        for figure in result.figures:
            ratio = figure.baseline
            if figure.ratio is not None:
                ratio += f" → {figure.ratio:.0%}"
            met = {True: "yes", False: "**no**", None: ""}[figure.met]
            cells = [figure.name, _fmt(figure.value, figure.unit), ratio, figure.target, met]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    notes = [f"- {r.key}: {note}" for r in results for note in r.notes]
    return "\n".join([*lines, "", *notes, ""])
