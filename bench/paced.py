"""Scenario 3, latency under paced load: 100, 1,000 and 3,000 messages/s from 20 pairs.

Each of 20 senders publishes at rate/20 per second to its own recipient, through the real
library and relay. The baseline, run just before at the same total rate, is one paced
broker hop with plain pika (one publisher, one consumer, confirms windowed). A rate counts
as sustained when the senders kept 95% of it and the last message arrived within a second
of the last publish (no backlog built up).
"""

from __future__ import annotations

from bench.context import Context
from bench.fleet import ReceivePlan, SendPlan, pairs, run_fleet
from bench.hop import run_hop
from bench.report import Figure, Run, ScenarioResult, percentile
from bench.stack import CpuMeter

PAIRS = 20
RATES = (100, 1_000, 3_000)
TARGETS_MS = {1_000: 5.0, 3_000: 50.0}


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("paced", f"3 Latency under paced load ({PAIRS} pairs)")
    stack = ctx.stack
    meta = stack.meta_json()
    people = ctx.people(2 * PAIRS)
    seconds = ctx.size(2, 10)
    stack.start_relays(1)

    for rate in RATES:
        per_sender = max(1, int(rate * seconds / PAIRS))
        total = per_sender * PAIRS
        hop = run_hop(ctx.endpoint(), total, window=500, rate=float(rate))
        base = Run.from_latencies(
            f"hop @ {rate:,}/s", hop.latencies_ms, hop.total_seconds, offered_per_s=float(rate)
        )
        with CpuMeter(stack) as cpu:
            fleet = run_fleet(
                meta,
                [SendPlan(s, r.username, per_sender, rate=rate / PAIRS) for s, r in pairs(people)],
                [ReceivePlan(r, per_sender) for _, r in pairs(people)],
                processes=2,
            )
        result.notes.append(f"{rate}/s: {cpu.summary()}")
        run = Run.from_latencies(
            f"{PAIRS} pairs @ {rate:,}/s",
            fleet.latencies_ms,
            fleet.seconds,
            offered_per_s=float(rate),
        )
        send_rate = fleet.sent / fleet.send_seconds if fleet.sent > 1 else 0.0
        tail_s = (fleet.last_receive_ns - fleet.last_publish_ns) / 1e9
        sustained = fleet.received == total and send_rate >= 0.95 * rate and tail_s < 1.0
        run.extra.update(send_rate=send_rate, tail_s=tail_s, sustained=float(sustained))
        run.extra.update({f"cores_{k}": v for k, v in cpu.cores.items()})
        run.extra["hop_confirm_p99_ms"] = percentile(sorted(hop.confirm_ms), 99)
        result.runs += [base, run]
        target = TARGETS_MS.get(rate)
        p99 = run.latency_ms["p99"]
        result.figures += [
            Figure(
                f"{rate:,}/s: p50",
                run.latency_ms["p50"],
                "ms",
                baseline=f"one hop p50 {base.latency_ms['p50']:.2f} ms",
            ),
            Figure(
                f"{rate:,}/s: p99",
                p99,
                "ms",
                target=f"≤ {target:g} ms" if target else "",
                met=None if target is None else p99 <= target,
                baseline=f"one hop p99 {base.latency_ms['p99']:.2f} ms",
                ratio=p99 / base.latency_ms["p99"] if base.latency_ms["p99"] > 0 else None,
            ),
            Figure(
                f"{rate:,}/s: sustained",
                send_rate,
                "msg/s",
                target="≥ 95% of offered, no backlog",
                met=sustained,
                baseline=f"received {fleet.received}/{total}, last {tail_s * 1000:.0f} ms "
                "after last publish",
            ),
        ]
        if fleet.errors:
            result.notes.append(f"{rate}/s: {'; '.join(fleet.errors[:3])}")
    stack.stop_relays()
    result.notes.append(
        "ratio = end-to-end p99 / one paced plain-pika hop's p99 at the same rate, same run"
    )
    return result
