"""Scenario 2, end-to-end direct messages: S senders → relay(s) → R recipients, flat out.

Every hop is persistent and confirmed (client → outbox, relay → inbox), the clients are the
real library (`send_many`, `consume`), and the relay is the real service with its defaults.
The figure that matters is the ratio to the windowed ceiling of scenario 1: two persisted
hops per message make 50% the design's limit.
"""

from __future__ import annotations

from bench.context import Context
from bench.fleet import ReceivePlan, SendPlan, pairs, run_fleet
from bench.report import Figure, Run, ScenarioResult
from bench.stack import CpuMeter

SENDERS = 8  # and as many recipients; more senders spread over more outbox shards
PROCESSES = 4  # per side
TARGET_RATIO = 0.40


def _sac_spread(ctx: Context) -> str:
    """Which relay connection is the active consumer of each outbox shard."""
    out = ctx.stack.node.ctl(
        "list_consumers",
        "-p",
        "messenger",
        "--no-table-headers",
        "--quiet",
        "queue_name",
        "channel_pid",
        "active",
    )
    active = sorted(
        {line.split("\t")[1] for line in out.splitlines() if "\ttrue" in line and "relay." in line}
    )
    return f"{len(active)} relay channel(s) active over the 4 outbox shards"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("direct", "2 End-to-end direct messages (library + relay)")
    stack = ctx.stack
    stack.ensure_auth()
    meta = stack.meta_json()
    people = ctx.people(2 * SENDERS)
    per_sender = ctx.size(1_000, 5_000)

    for replicas in (1, 2):
        before, hop_us = ctx.ceiling_probe()
        stack.start_relays(replicas)
        spread = _sac_spread(ctx)
        with CpuMeter(stack) as cpu:
            fleet = run_fleet(
                meta,
                [SendPlan(s, r.username, per_sender) for s, r in pairs(people)],
                [ReceivePlan(r, per_sender) for _, r in pairs(people)],
                processes=PROCESSES,
            )
        stack.stop_relays()
        after, _ = ctx.ceiling_probe()
        ceiling = (before + after) / 2
        e2e_us = cpu.per_message_us(fleet.received)
        run = Run.from_latencies(
            f"{SENDERS}→{SENDERS}, {replicas} relay(s)", fleet.latencies_ms, fleet.seconds
        )
        result.runs.append(run)
        ctx.baselines[f"direct_{replicas}"] = run.rate
        ratio = run.rate / ceiling
        result.figures += [
            Figure(
                f"{replicas} relay: messages/s",
                run.rate,
                "msg/s",
                target=f"≥ {TARGET_RATIO:.0%} of ceiling = {TARGET_RATIO * ceiling:,.0f}",
                met=ratio >= TARGET_RATIO,
                baseline=f"ceiling around it {ceiling:,.0f} ({before:,.0f}/{after:,.0f})",
                ratio=ratio,
            ),
            Figure(
                f"{replicas} relay: latency p50 / p95 / p99",
                run.latency_ms["p99"],
                "ms",
                baseline=f"p50 {run.latency_ms['p50']:.0f} ms, p95 {run.latency_ms['p95']:.0f} ms"
                " (flat out: queueing)",
            ),
            Figure(
                f"{replicas} relay: broker CPU per message",
                e2e_us.get("broker", float("nan")),
                "µs",
                baseline=f"one hop {hop_us.get('broker', float('nan')):.0f} µs",
                ratio=e2e_us.get("broker", 0) / hop_us["broker"] if hop_us.get("broker") else None,
            ),
            Figure(
                f"{replicas} relay: Python CPU per message",
                e2e_us.get("relay", 0) + e2e_us.get("clients", 0),
                "µs",
                baseline=f"relay {e2e_us.get('relay', 0):.0f} + clients "
                f"{e2e_us.get('clients', 0):.0f}; one hop's pika clients "
                f"{hop_us.get('clients', float('nan')):.0f} µs",
            ),
        ]
        expected = SENDERS * per_sender
        if fleet.received != expected or fleet.errors:
            result.notes.append(
                f"{replicas} relay(s): {fleet.received} received of {expected} sent"
                + (" (duplicates: at-least-once redelivery)" if fleet.received > expected else "")
                + (f"; errors: {'; '.join(fleet.errors[:3])}" if fleet.errors else "")
            )
        run.extra.update({f"cores_{k}": v for k, v in cpu.cores.items()})
        result.notes.append(f"{replicas} relay(s): {spread}; {cpu.summary()}")
    return result
