"""Scenario 4, offline backlog: N messages wait for a user who then logs in and drains them.

The clock starts at the login (POST /v1/sessions, argon2 included) and stops when the last
message is stored in the client's history (clients/library/history.py, the CLI's own store)
and acked, as `messenger inbox` does it (a batch per I/O turn, one commit per batch). Two
baselines from the same run: the broker's own drain of an equal backlog with plain pika (no
storing), and the history store alone one commit per message (`store_received_many` of one
message each, no broker).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.context import Context
from bench.fleet import stamped_text
from bench.hop import run_hop
from bench.report import Figure, Run, ScenarioResult
from clients.library.history import History
from clients.library.messaging import MessengerConnection
from protocol.accounts import Meta
from protocol.messages import DeliveredMessage
from protocol.topology import inbox_queue

TARGET_PER_S = 7_000.0


def _history_alone(count: int) -> float:
    """Messages per second the history takes in one at a time, without any broker."""
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        history = History(Path(tmp) / "h" / "history.sqlite3", owner="bob")
        now = datetime.now(UTC)
        messages = [
            DeliveredMessage.model_validate(
                {
                    "id": f"m{i:08d}",
                    "from": "alice",
                    "to": "bob",
                    "text": stamped_text(),
                    "sent_at": now,
                }
            )
            for i in range(count)
        ]
        start = time.perf_counter()
        for message in messages:
            history.store_received_many([message])
        elapsed = time.perf_counter() - start
        history.close()
    return count / elapsed


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("backlog", "4 Offline backlog drained into the client's history")
    stack = ctx.stack
    count = ctx.size(10_000, 10_000)
    sender, reader = ctx.people(2)[0], stack.accounts(1, prefix="o")[0]
    meta = Meta.model_validate_json(stack.meta_json())

    # Baselines: the broker's drain of an equal plain backlog; the history store alone.
    hop = run_hop(ctx.endpoint(), count, window=500, preload=True)
    raw_rate = count / hop.drain_seconds
    store_rate = _history_alone(ctx.size(1_000, 3_000))

    # The backlog: sent through the relay while the reader is offline.
    stack.start_relays(1)
    with MessengerConnection.open(meta, sender.username, sender.token) as connection:
        answers = connection.send_many(
            ((reader.username, stamped_text()) for _ in range(count)), window=1000, timeout=60
        )
    stack.stop_relays()
    accepted = sum(1 for a in answers if a.status == "accepted")
    depth = stack.node.queue_depths().get(inbox_queue(reader.username), 0)

    # The reader logs in and drains into its history.
    with tempfile.TemporaryDirectory(prefix="bench-home-") as home:
        marks = {"first": 0.0, "last": 0.0}
        stored = 0
        start = time.monotonic()
        with httpx.Client() as client:
            stack.login(client, reader)
        history = History(
            Path(home) / "users" / reader.username / "history.sqlite3", reader.username
        )
        connection = MessengerConnection.open(meta, reader.username, reader.token)

        def on_messages(messages: list[DeliveredMessage]) -> None:
            nonlocal stored
            history.store_received_many(messages)  # one commit per batch, as `inbox` does
            stored += len(messages)
            now = time.monotonic()
            marks["first"] = marks["first"] or now
            marks["last"] = now
            if stored >= max(depth, count):
                connection.stop()

        try:
            connection.consume_batches(on_messages, idle_timeout=20)
        finally:
            connection.close()
            history.close()
        total = time.monotonic() - start
    drain_s = max(1e-9, marks["last"] - marks["first"])
    drain_rate = stored / drain_s
    result.runs += [
        Run("plain pika drain (no store)", count, hop.drain_seconds),
        Run("history store alone", 1, 1 / store_rate),
        Run("login → last stored + acked", stored, total),
    ]
    result.figures += [
        Figure(
            "drain rate into history",
            drain_rate,
            "msg/s",
            target=f"≥ {TARGET_PER_S:,.0f} msg/s",
            met=drain_rate >= TARGET_PER_S,
            baseline=f"plain drain {raw_rate:,.0f}/s",
            ratio=drain_rate / raw_rate,
        ),
        Figure(
            "history store alone",
            store_rate,
            "msg/s",
            baseline="one commit per message (synchronous=FULL, WAL)",
        ),
        Figure(
            f"login → {stored:,} stored and acked",
            total,
            "s",
            baseline=f"of which login + connect {(marks['first'] - start) * 1000:.0f} ms",
        ),
    ]
    if accepted != count or depth != count or stored != count:
        result.notes.append(
            f"sent {count}, accepted {accepted}, queued {depth}, stored {stored} (more queued "
            "than sent: the library published some again, with the same id)"
        )
    return result
