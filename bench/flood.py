"""Scenario: one flooding sender against the others' latency (issue 9, per-sender limit).

Probe pairs send at a human pace through the real library and relay, once alone (the
baseline) and once while one signed-up account floods the outbox with plain pika at
FLOOD_RATE (with a reply-to, as the library sets it), in the same run. The
relay runs with its default rate limits: the flooder's burst is relayed, the rest is
answered `rejected: rate_limited` without touching an inbox. Target: the flood raises the
probes' p99 by at most 5 ms.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import time
from typing import Any

import pika

from bench.context import Context
from bench.fleet import ReceivePlan, SendPlan, pairs, run_fleet
from bench.report import Figure, Run, ScenarioResult
from bench.stack import CpuMeter
from broker.pika_io import async_channel, coalesce_pika_writes
from protocol.topology import OUTBOX_EXCHANGE, REPLY_TO

PROBE_PAIRS = 4
PROBE_RATE = 8.0  # messages/s per probe sender: below the default per-sender limit
TARGET_MS = 5.0
# The flood is paced, and its process runs at the lowest CPU priority: unpaced, the flooding
# process itself would take a core of this 2-core machine from the relay and the broker,
# which a remote flooder would not.
FLOOD_RATE = 3000.0


def _flood(
    params: pika.ConnectionParameters,
    sender: str,
    to: str,
    stop: multiprocessing.synchronize.Event,
    out: multiprocessing.connection.Connection,
) -> None:
    """Publish FLOOD_RATE messages a second until `stop`; count the answers."""
    coalesce_pika_writes()
    os.nice(19)  # a remote flooder would cost this machine nothing: it takes only spare CPU
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    answers: dict[str, int] = {}

    def on_answer(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        data = json.loads(body)
        key = data.get("reason") or data.get("status")
        answers[key] = answers.get(key, 0) + 1

    channel.basic_consume(REPLY_TO, on_answer, auto_ack=True)
    publisher = async_channel(channel)  # frames queued, written once per I/O turn
    body = json.dumps({"to": to, "text": "flood " + "x" * 100}).encode()
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * FLOOD_RATE) - sent
        if due <= 0:
            connection.process_data_events(time_limit=0.001)
            continue
        for _ in range(min(due, 500)):
            sent += 1
            publisher.basic_publish(
                OUTBOX_EXCHANGE,
                sender,
                body,
                pika.BasicProperties(
                    content_type="application/json",
                    user_id=sender,
                    message_id=f"f{sent}",
                    reply_to=REPLY_TO,
                ),
            )
        connection.process_data_events(time_limit=0)
    seconds = time.monotonic() - started
    deadline = time.monotonic() + 2  # a flood hears about its first refusals only
    while sum(answers.values()) < sent and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.2)
    connection.close()
    out.send({"sent": sent, "seconds": seconds, "answers": answers})


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("flood", "Flood: probe pairs' latency with one flooding sender")
    stack = ctx.stack
    meta = stack.meta_json()
    people = ctx.people(2 * PROBE_PAIRS)
    flooder, target = stack.accounts(2, prefix="flood")
    seconds = ctx.size(6, 20)
    per_sender = int(PROBE_RATE * seconds)
    sends = [SendPlan(s, r.username, per_sender, rate=PROBE_RATE) for s, r in pairs(people)]
    receives = [ReceivePlan(r, per_sender) for _, r in pairs(people)]
    stack.start_relays(1, rate_limits=True)  # the defaults: MESSENGER_RELAY_SENDER_RATE etc.

    with CpuMeter(stack) as cpu:
        quiet = run_fleet(meta, sends, receives, processes=1)
    result.notes.append(f"without flood: {cpu.summary()}")
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    end, pipe = spawn.Pipe(duplex=False)
    flood = spawn.Process(
        target=_flood,
        args=(stack.params(flooder.username, flooder.token), flooder.username, target.username,
              stop, pipe),
        daemon=True,
    )  # fmt: skip
    flood.start()
    time.sleep(1.0)  # the flood is under way (its burst spent) before the probes start
    try:
        with CpuMeter(stack) as cpu:
            loud = run_fleet(meta, sends, receives, processes=1)
    finally:
        stop.set()
        report: dict[str, Any] = (
            end.recv() if end.poll(30) else {"sent": 0, "seconds": 1, "answers": {}}
        )
        flood.join(10)
        if flood.is_alive():
            flood.kill()
    result.notes.append(f"with flood: {cpu.summary()}")
    # What one refused message costs the relay, whatever the machine's load.
    relay_us = cpu.per_message_us(report["sent"]).get("relay", float("nan"))

    base = Run.from_latencies("probes alone", quiet.latencies_ms, quiet.seconds)
    run = Run.from_latencies("probes + 1 flooder", loud.latencies_ms, loud.seconds)
    flood_rate = report["sent"] / max(report["seconds"], 1e-9)
    run.extra.update(flood_per_s=flood_rate)
    result.runs += [base, run]
    rise = run.latency_ms["p99"] - base.latency_ms["p99"]
    answers = report["answers"]
    result.figures += [
        Figure(
            "probe p99 rise",
            rise,
            "ms",
            target=f"≤ {TARGET_MS:g} ms",
            met=rise <= TARGET_MS,
            baseline=f"p99 {base.latency_ms['p99']:.2f} ms alone, "
            f"{run.latency_ms['p99']:.2f} ms with the flood",
            ratio=run.latency_ms["p99"] / base.latency_ms["p99"]
            if base.latency_ms["p99"] > 0
            else None,
        ),
        Figure(
            "relay CPU per flood message",
            relay_us,
            "µs",
            baseline="probes' messages included: they are < 1% of the load",
        ),
        Figure(
            "flood offered",
            flood_rate,
            "msg/s",
            baseline=f"answers: {', '.join(f'{k} {v}' for k, v in sorted(answers.items()))}",
        ),
    ]
    if loud.received < len(sends) * per_sender:
        result.notes.append(f"probes lost messages: {loud.received}/{len(sends) * per_sender}")
    return result
