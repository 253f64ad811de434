"""Scenario 1, the ceiling: one broker hop with plain pika, confirm per message and windowed."""

from __future__ import annotations

from bench.context import Context
from bench.hop import run_hop
from bench.report import Figure, Run, ScenarioResult
from bench.stack import CpuMeter

WINDOW = 500


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("ceiling", "1 Ceiling: plain pika, one persistent hop")
    endpoint = ctx.endpoint()

    one = run_hop(endpoint, ctx.size(1_000, 5_000), window=1)
    one_run = Run.from_latencies("confirm per message", one.latencies_ms, one.total_seconds)
    with CpuMeter(ctx.stack) as cpu:
        windowed = run_hop(endpoint, ctx.size(10_000, 50_000), window=WINDOW)
    per_message = cpu.per_message_us(windowed.published)
    win_run = Run.from_latencies(
        f"{WINDOW} confirms outstanding", windowed.latencies_ms, windowed.total_seconds
    )
    result.runs += [one_run, win_run]
    ctx.baselines["ceiling_one_by_one"] = one_run.rate
    ctx.baselines["ceiling_windowed"] = win_run.rate

    result.figures += [
        Figure("confirm per message", one_run.rate, "msg/s", target="(baseline; ≈1,300 here)"),
        Figure(
            f"window of {WINDOW} confirms",
            win_run.rate,
            "msg/s",
            baseline="confirm per message",
            ratio=win_run.rate / one_run.rate,
            target="(baseline; ≈10,000 here)",
        ),
        Figure("p50 latency, one by one", one_run.latency_ms["p50"], "ms"),
        Figure("p99 latency, windowed (queueing)", win_run.latency_ms["p99"], "ms"),
    ]
    if windowed.nacked or one.nacked:
        result.notes.append(f"nacked: {one.nacked + windowed.nacked}")
    result.notes.append(
        f"windowed: CPU per message broker {per_message.get('broker', 0):.0f} µs + pika "
        f"publisher/consumer {per_message.get('clients', 0):.0f} µs; {cpu.summary()}. One "
        "confirm at a time: a round trip and a queue sync per message"
    )
    return result
