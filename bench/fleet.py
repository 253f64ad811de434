"""Senders and recipients made of the real client library, spread over worker processes.

Each sender is one `MessengerConnection` that pushes its messages with `send_many()` (a
window of messages awaiting the relay's answer), paced or as fast as the window allows;
each recipient is one `MessengerConnection.consume()`. Every text starts with its publish
time (CLOCK_MONOTONIC, one clock for all processes of this machine), so the recipient's
callback measures the latency of every message: publish → outbox → relay → inbox → callback.

Within a worker process every sender and recipient has its own thread (the library's rule:
one connection per thread); several processes keep the GIL from serialising the clients.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.hop import wait_for
from bench.stack import Account

STAMP_DIGITS = 20
TEXT_CHARS = 200  # ~200-byte messages, like the ceiling's


@dataclass(frozen=True)
class SendPlan:
    sender: Account
    to: str
    count: int
    rate: float | None = None  # messages/s of this sender; None: as fast as the window allows
    window: int = 1000


@dataclass(frozen=True)
class ReceivePlan:
    recipient: Account
    expected: int


@dataclass
class FleetResult:
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    accepted: int = 0
    received: int = 0
    first_publish_ns: int = 0
    last_publish_ns: int = 0
    last_receive_ns: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """From the first publish to the last message in a recipient's callback."""
        return max(1e-9, (self.last_receive_ns - self.first_publish_ns) / 1e9)

    @property
    def send_seconds(self) -> float:
        return max(1e-9, (self.last_publish_ns - self.first_publish_ns) / 1e9)


def stamped_text() -> str:
    stamp = f"{time.monotonic_ns():0{STAMP_DIGITS}d} "
    return stamp + "x" * (TEXT_CHARS - len(stamp))


def stamp_of(text: str) -> int:
    return int(text[:STAMP_DIGITS])


# -- inside a worker process -------------------------------------------------------------------


def _open(meta_json: str, account: Account) -> Any:
    from broker.pika_io import coalesce_pika_writes
    from clients.library.messaging import MessengerConnection
    from protocol.accounts import Meta

    coalesce_pika_writes()  # as the CLI's entry point does
    return MessengerConnection.open(
        Meta.model_validate_json(meta_json), account.username, account.token
    )


def _sender(meta_json: str, plan: SendPlan, go: Any, out: dict[str, Any]) -> None:
    connection = _open(meta_json, plan.sender)
    marks = {"first": 0, "last": 0}

    def messages() -> Iterator[tuple[str, str]]:
        interval = 1 / plan.rate if plan.rate else 0.0
        due = time.monotonic()
        for _ in range(plan.count):
            if interval:
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                due += interval
            text = stamped_text()
            marks["last"] = int(text[:STAMP_DIGITS])
            marks["first"] = marks["first"] or marks["last"]
            yield plan.to, text

    try:
        go.wait()
        answers = connection.send_many(messages(), window=plan.window, timeout=60)
        out["accepted"] = sum(1 for a in answers if a.status == "accepted")
        rejected = [a.reason for a in answers if a.status != "accepted"]
        if rejected:
            out["errors"] = [f"{len(rejected)} rejected ({rejected[0]})"]
    finally:
        connection.close()
    out["sent"] = plan.count
    out["first"], out["last"] = marks["first"], marks["last"]


def _recipient(
    meta_json: str, plan: ReceivePlan, idle: float, ready: threading.Semaphore, out: dict[str, Any]
) -> None:
    connection = _open(meta_json, plan.recipient)
    latencies: list[float] = []
    marks = {"last": 0}
    not_before = time.monotonic_ns()  # left over from an earlier, failed load: not counted

    def on_message(message: Any) -> None:
        now = time.monotonic_ns()
        if stamp_of(message.text) < not_before:
            return
        latencies.append((now - stamp_of(message.text)) / 1e6)
        marks["last"] = now
        if len(latencies) >= plan.expected:
            connection.stop()

    ready.release()
    try:
        connection.consume(on_message, idle_timeout=idle)
    finally:
        connection.close()
    out.update(latencies=latencies, received=len(latencies), last_receive=marks["last"])


def _worker(
    role: str,
    meta_json: str,
    plans: list[Any],
    idle: float,
    ready: Any,
    go: Any,
    pipe: multiprocessing.connection.Connection,
) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    sys.setswitchinterval(0.0005)  # many mostly-idle threads: hand the GIL over quickly
    outs: list[dict[str, Any]] = [{} for _ in plans]
    subscribed = threading.Semaphore(0)
    threads = []

    def guarded(target: Callable[..., None], *args: Any) -> Callable[[], None]:
        def body() -> None:
            try:
                target(*args)
            except Exception as exc:
                args[-1].setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
                subscribed.release()

        return body

    for plan, out in zip(plans, outs, strict=True):
        if role == "send":
            body = guarded(_sender, meta_json, plan, go, out)
        else:
            body = guarded(_recipient, meta_json, plan, idle, subscribed, out)
        threads.append(threading.Thread(target=body, daemon=True))
    for thread in threads:
        thread.start()
    if role == "receive":
        for _ in plans:
            subscribed.acquire()
    ready.release()
    for thread in threads:
        thread.join()
    pipe.send(outs)


# -- the orchestration -------------------------------------------------------------------------


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def run_fleet(
    meta_json: str,
    sends: list[SendPlan],
    receives: list[ReceivePlan],
    processes: int = 2,
    idle: float = 20.0,
    timeout: float = 300.0,
    on_running: Callable[[], None] | None = None,
) -> FleetResult:
    """Start every recipient (subscribed), then every sender at once; wait for both sides."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
    groups = [("receive", g) for g in _split(receives, processes)] + [
        ("send", g) for g in _split(sends, processes)
    ]
    result = FleetResult()
    try:
        for role, group in groups:
            end, pipe = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_worker, args=(role, meta_json, group, idle, ready, go, pipe), daemon=True
            )
            process.start()
            workers.append((process, end))
        for _ in groups:
            if not ready.acquire(timeout=120):
                raise TimeoutError("fleet workers did not connect within 120 s")
        time.sleep(0.2)
        go.set()
        if on_running is not None:
            on_running()
        outs: list[dict[str, Any]] = []
        for process, end in workers:
            wait_for(end, process, timeout, "fleet worker")
            outs += end.recv()
    finally:
        for process, _ in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    firsts = [o["first"] for o in outs if o.get("first")]
    result.first_publish_ns = min(firsts) if firsts else 0
    result.last_publish_ns = max((o.get("last", 0) for o in outs), default=0)
    result.last_receive_ns = max((o.get("last_receive", 0) for o in outs), default=0)
    for out in outs:
        result.latencies_ms += out.get("latencies", [])
        result.sent += out.get("sent", 0)
        result.accepted += out.get("accepted", 0)
        result.received += out.get("received", 0)
        result.errors += out.get("errors", [])
    if result.errors and result.received == 0:
        raise RuntimeError(f"no message arrived: {result.errors[0]}")
    return result


def pairs(accounts: list[Account]) -> list[tuple[Account, Account]]:
    """First half sends to the second half, one to one."""
    half = len(accounts) // 2
    return list(zip(accounts[:half], accounts[half:], strict=True))
