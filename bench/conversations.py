"""Scenario 9, server-side conversations (#13): the archive keeps up, history pages stay
fast, and each extra device costs what one more queue costs.

- archive ingest: S senders → relay → one recipient's device, flat out, with the archive
  stopped (its queue fills); then the archive is started and drains that backlog. Its
  ingest rate is compared with the relay's end-to-end rate of the same messages in the same
  run: at ≥ 1.0 the archive never falls behind for long.
- history page: a conversation of 100,000 messages (fewer with --quick) in the archive's
  store, on SQLite and on PostgreSQL (127.0.0.1:5432, a database of our own, dropped after;
  skipped when none answers); p99 of a page of 50 at random cursors, as the store serves it.
- fan-out: the same load to a recipient with 1, 2 and 3 devices (device queues consumed by
  plain pika): messages/s and broker CPU per message; the cost of the 2nd and 3rd device is
  the ratio to one device.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pika

from bench.context import Context
from bench.fleet import SendPlan, run_fleet
from bench.report import Figure, Run, ScenarioResult, percentile
from bench.stack import Account, CpuMeter
from deploy.local_broker import free_port
from deploy.processes import ServiceProcess
from protocol.messages import DeliveredMessage
from services.archive.store import Store

SENDERS = 4
PAGE = 50
INGEST_TARGET_RATIO = 1.0
PAGE_P99_TARGET_MS = 20.0


@dataclass
class DeviceCounter:
    """A plain-pika consumer of one device queue, counting until `expected`."""

    params: pika.ConnectionParameters
    queue: str
    expected: int
    received: int = 0
    last_ns: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        ready = threading.Event()
        thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        thread.start()
        ready.wait(30)
        return thread

    def _run(self, ready: threading.Event) -> None:
        connection = pika.BlockingConnection(self.params)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)

        def on_message(ch, method, _props, _body) -> None:  # type: ignore[no-untyped-def]
            self.received += 1
            self.last_ns = time.monotonic_ns()
            if self.received % 200 == 0 or self.received >= self.expected:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if self.received >= self.expected:
                self.done.set()

        channel.basic_consume(self.queue, on_message)
        ready.set()
        try:
            while not self._stop.is_set() and not self.done.is_set():
                connection.process_data_events(time_limit=0.1)
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def stop(self) -> None:
        self._stop.set()


def _login(ctx: Context, account: Account) -> tuple[str, str]:
    response = httpx.post(
        f"{ctx.stack.auth_url}/v1/sessions",
        json={"username": account.username, "password": account.password},
        timeout=120,
    )
    response.raise_for_status()
    body = response.json()
    return body["token"], body["device_queue"]


def _start_archive(ctx: Context, database: Path) -> ServiceProcess:
    stack = ctx.stack
    archive = ServiceProcess(
        module="services.archive",
        args=[],
        env={
            "MESSENGER_ARCHIVE_AMQP_HOST": stack.node.host,
            "MESSENGER_ARCHIVE_AMQP_PORT": str(stack.node.amqp_port),
            "MESSENGER_ARCHIVE_AMQP_PASSWORD": stack.node.service_passwords["archive"],
            "MESSENGER_ARCHIVE_DATABASE_URL": f"sqlite:///{database}",
            "MESSENGER_ARCHIVE_PORT": str(free_port()),
            "MESSENGER_ARCHIVE_KEY": secrets.token_urlsafe(16),
            "MESSENGER_ARCHIVE_LOG_LEVEL": "WARNING",
        },
        log_path=stack.workdir / "archive.log",
    )
    archive.start()
    return archive


def _archived(database: Path) -> int:
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _queue_depth(ctx: Context, queue: str) -> int:
    out = ctx.stack.node.ctl(
        "list_queues", "-p", "messenger", "--no-table-headers", "--quiet", "name", "messages"
    )
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return 0


def _deliver(ctx: Context, devices: int, per_sender: int) -> tuple[float, dict[str, float]]:
    """S senders → one recipient with `devices` device queues; (messages/s until the last
    device has all, CPU µs per message)."""
    stack = ctx.stack
    senders = stack.accounts(SENDERS, prefix="cs")
    recipient = stack.accounts(1, prefix="cr")[0]
    queues = [_login(ctx, recipient) for _ in range(devices)]
    expected = SENDERS * per_sender
    counters = [
        DeviceCounter(stack.params(recipient.username, token), queue, expected)
        for token, queue in queues
    ]
    for counter in counters:
        counter.start()
    start = time.monotonic_ns()
    with CpuMeter(stack) as cpu:
        run_fleet(
            stack.meta_json(),
            [SendPlan(s, recipient.username, per_sender, window=500) for s in senders],
            [],
            processes=2,
        )
        for counter in counters:
            counter.done.wait(300)
    for counter in counters:
        counter.stop()
    last = max(c.last_ns for c in counters)
    got = min(c.received for c in counters)
    seconds = max(1e-9, (last - start) / 1e9)
    return got / seconds, cpu.per_message_us(got)


def _ingest(ctx: Context, result: ScenarioResult) -> None:
    per_sender = ctx.size(1_000, 5_000)
    database = ctx.stack.workdir / f"archive-{uuid.uuid4().hex[:6]}.sqlite3"
    # Whatever other scenarios' relays copied to the archive queue is not ours to time.
    before = _queue_depth(ctx, "archive.ingest")
    ctx.stack.start_relays(1)
    relay_rate, _ = _deliver(ctx, 1, per_sender)
    ctx.stack.stop_relays()
    backlog = _queue_depth(ctx, "archive.ingest")
    archive = _start_archive(ctx, database)
    try:
        begin = time.monotonic()
        deadline = begin + 600
        while _archived(database) < backlog and time.monotonic() < deadline:
            if not archive.alive:
                raise RuntimeError(f"the archive exited: {archive.log()[-2000:]}")
            time.sleep(0.05)
        stored = _archived(database)
        seconds = time.monotonic() - begin
    finally:
        archive.stop()
    ingest_rate = stored / seconds
    ratio = ingest_rate / relay_rate
    result.runs.append(Run("archive drains its backlog", stored, seconds))
    result.figures += [
        Figure(
            "archive ingest rate",
            ingest_rate,
            "msg/s",
            target=f"≥ {INGEST_TARGET_RATIO:.1f} times the relay end to end",
            met=ratio >= INGEST_TARGET_RATIO,
            baseline=f"relay end to end {relay_rate:,.0f} msg/s, same run",
            ratio=ratio,
        )
    ]
    result.notes.append(
        f"archive: {stored} entries stored in {seconds:.1f} s (SQLite, batches of 500; "
        f"{before} were queued before this scenario)"
    )


def _message(sender: str, to: str, text: str, n: int) -> DeliveredMessage:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=n)
    return DeliveredMessage(id=str(uuid.uuid4()), sender=sender, to=to, text=text, sent_at=at)


def _fill(store: Store, size: int) -> list[str]:
    """A conversation of `size` messages between ann and bob, and others' traffic beside it;
    the conversation's ids, oldest first."""
    ids: list[str] = []
    batch: list[DeliveredMessage] = []
    for i in range(size):
        sender, to = ("ann", "bob") if i % 2 else ("bob", "ann")
        message = _message(sender, to, f"message {i} " + "x" * 80, i)
        ids.append(message.id)
        batch.append(message)
        if len(batch) == 2_000:
            store.ingest(batch)
            batch = []
    store.ingest(batch)
    store.ingest([_message("cy", "dee", "noise", i) for i in range(2_000)])
    return ids


def _history(ctx: Context, result: ScenarioResult) -> None:
    from tests.integration.archive_db import archive_database, postgres_answers

    size = 100_000  # the figure; filling it takes well under a minute
    kinds = ["sqlite"] + (["postgresql"] if postgres_answers() else [])
    if "postgresql" not in kinds:
        result.notes.append("history page on PostgreSQL skipped: nothing answers on 5432")
    for kind in kinds:
        with archive_database(kind, ctx.stack.workdir) as url:
            store = Store.open(url)
            try:
                ids = _fill(store, size)
                rng = random.Random(13)
                latencies, cpu = [], []
                for _ in range(ctx.size(300, 1_000)):
                    cursor = rng.choice(ids[PAGE:])
                    begin, begin_cpu = time.perf_counter(), time.process_time()
                    page = store.page("bob", "ann", before=cursor, limit=PAGE)
                    latencies.append((time.perf_counter() - begin) * 1000)
                    cpu.append((time.process_time() - begin_cpu) * 1000)
                    assert len(page.messages) == PAGE
                latencies.sort()
                cpu.sort()
                p99 = percentile(latencies, 99)
                result.runs.append(Run.from_latencies(f"history page, {kind}", latencies,
                                                      sum(latencies) / 1000))  # fmt: skip
                result.figures.append(
                    Figure(
                        f"history page p99, {size:,} messages, {kind}",
                        p99,
                        "ms",
                        target=f"≤ {PAGE_P99_TARGET_MS:.0f} ms",
                        met=p99 <= PAGE_P99_TARGET_MS,
                        baseline=f"p50 {percentile(latencies, 50):.1f} ms; our CPU p99 "
                        f"{percentile(cpu, 99):.1f} ms (the rest: waiting for a core, the "
                        f"database); load average {os.getloadavg()[0]:.1f}",
                    )
                )
            finally:
                store.close()


def _fanout(ctx: Context, result: ScenarioResult) -> None:
    per_sender = ctx.size(500, 2_500)
    rates: dict[int, float] = {}
    broker_us: dict[int, float] = {}
    ctx.stack.start_relays(1)
    try:
        for devices in (1, 2, 3):
            rate, cpu = _deliver(ctx, devices, per_sender)
            rates[devices], broker_us[devices] = rate, cpu.get("broker", float("nan"))
    finally:
        ctx.stack.stop_relays()
    for devices in (2, 3):
        result.figures.append(
            Figure(
                f"{devices} devices: messages/s",
                rates[devices],
                "msg/s",
                baseline=f"1 device {rates[1]:,.0f} msg/s; broker CPU {broker_us[devices]:.0f}"
                f" µs/msg vs {broker_us[1]:.0f}",
                ratio=rates[devices] / rates[1],
            )
        )


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("conversations", "9 Conversations: archive, history pages, devices")
    stack = ctx.stack
    # Device queues only (no legacy inbox per user), as once every client consumes them.
    stack.start_auth(MESSENGER_AUTH_LEGACY_INBOXES="false")
    try:
        _ingest(ctx, result)
        _fanout(ctx, result)
        _history(ctx, result)
    finally:
        stack.start_auth()  # the others' settings again
    return result
