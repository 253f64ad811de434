"""One broker hop with plain pika: the physical limit every other figure is compared with.

A publisher (publisher confirms, persistent ~200-byte messages) → a durable classic queue →
a consumer (manual ack per message), each in its own process so that neither's GIL slows
the other. The publisher keeps either one confirm outstanding (`window=1`: publish, wait,
publish) or up to `window` of them (pika's asynchronous SelectConnection). With `rate` it
paces itself; with `preload` every message is published before the consumer starts (the
drain rate of a backlog).

Each message carries its publish time (CLOCK_MONOTONIC, the same clock in every process),
so the consumer measures the latency of every single message.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import struct
import time
import uuid
from array import array
from dataclasses import dataclass
from typing import Any

import pika
import pika.channel
import pika.frame
import pika.spec

from broker.params import connection_parameters

BODY_BYTES = 200
_PAD = b"x" * (BODY_BYTES - 8)
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect (picklable, for the worker processes)."""

    host: str
    port: int
    vhost: str
    username: str
    password: str

    def params(self) -> pika.ConnectionParameters:
        return connection_parameters(
            (self.host, self.port),
            vhost=self.vhost,
            username=self.username,
            password=self.password,
            connection_attempts=3,
            retry_delay=0.5,
        )


@dataclass
class HopResult:
    latencies_ms: list[float]
    first_publish_ns: int
    last_confirm_ns: int
    first_receive_ns: int
    last_receive_ns: int
    published: int
    nacked: int
    confirm_ms: list[float]  # publish → broker's confirm, per message

    @property
    def total_seconds(self) -> float:
        """From the first publish to the last message consumed."""
        return max(1e-9, (self.last_receive_ns - self.first_publish_ns) / 1e9)

    @property
    def publish_seconds(self) -> float:
        return max(1e-9, (self.last_confirm_ns - self.first_publish_ns) / 1e9)

    @property
    def drain_seconds(self) -> float:
        """From the first message consumed to the last (a preloaded backlog's drain)."""
        return max(1e-9, (self.last_receive_ns - self.first_receive_ns) / 1e9)


def body() -> bytes:
    return struct.pack("!Q", time.monotonic_ns()) + _PAD


# -- the consumer ------------------------------------------------------------------------------


def _consume(
    endpoint: Endpoint,
    queue: str,
    count: int,
    prefetch: int,
    timeout: float,
    ready: Any,
    subscribed: Any,
    out: multiprocessing.connection.Connection,
) -> None:
    connection = pika.BlockingConnection(endpoint.params())
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    latencies = array("d")
    marks = {"first": 0, "last": 0}

    def on_message(
        ch: Any, method: pika.spec.Basic.Deliver, _props: pika.BasicProperties, data: bytes
    ) -> None:
        now = time.monotonic_ns()
        if not marks["first"]:
            marks["first"] = now
        marks["last"] = now
        latencies.append((now - struct.unpack_from("!Q", data)[0]) / 1e6)
        ch.basic_ack(method.delivery_tag)
        if len(latencies) >= count:
            ch.stop_consuming()

    ready.wait()  # a preloaded run starts consuming only once the backlog is complete
    channel.basic_consume(queue, on_message)
    subscribed.set()
    connection.call_later(timeout, channel.stop_consuming)
    channel.start_consuming()
    out.send((latencies.tolist(), marks["first"], marks["last"]))
    connection.close()


# -- the publishers ----------------------------------------------------------------------------


def _publish_one_by_one(
    endpoint: Endpoint, queue: str, count: int
) -> tuple[int, int, int, int, list[float]]:
    connection = pika.BlockingConnection(endpoint.params())
    channel = connection.channel()
    channel.confirm_delivery()
    confirm_ms = []
    first = time.monotonic_ns()
    for _ in range(count):
        began = time.monotonic_ns()
        channel.basic_publish("", queue, body(), PERSISTENT, mandatory=True)  # waits for the ack
        confirm_ms.append((time.monotonic_ns() - began) / 1e6)
    last = time.monotonic_ns()
    connection.close()
    return first, last, count, 0, confirm_ms


class _WindowPublisher:
    """Keeps up to `window` confirms outstanding; optionally paced at `rate` per second."""

    def __init__(
        self, endpoint: Endpoint, queue: str, count: int, window: int, rate: float | None
    ) -> None:
        self.queue, self.count, self.window, self.rate = queue, count, window, rate
        self.sent = self.confirmed = self.nacked = self.last_tag = 0
        self.first = self.last = 0
        self.published_at: list[int] = []
        self.confirm_ms: list[float] = []
        self.channel: pika.channel.Channel | None = None
        self.connection: pika.SelectConnection = pika.SelectConnection(
            endpoint.params(),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_error,
            on_close_callback=self._on_closed,
        )

    def run(self) -> tuple[int, int, int, int, list[float]]:
        self.connection.ioloop.start()
        return self.first, self.last, self.confirmed, self.nacked, self.confirm_ms

    def _on_closed(self, _connection: Any, _reason: BaseException) -> None:
        self.connection.ioloop.stop()

    def _on_error(self, _connection: Any, error: BaseException) -> None:
        self.connection.ioloop.stop()
        raise RuntimeError(f"publisher could not connect: {error!r}")

    def _on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        channel.confirm_delivery(self._on_confirm)
        self.first = time.monotonic_ns()
        self._fill()

    def _due(self) -> int:
        if self.rate is None:
            return self.count
        elapsed = (time.monotonic_ns() - self.first) / 1e9
        return min(self.count, int(elapsed * self.rate) + 1)

    def _fill(self) -> None:
        assert self.channel is not None
        due = self._due()
        while self.sent < due and self.sent - self.confirmed - self.nacked < self.window:
            self.channel.basic_publish("", self.queue, body(), PERSISTENT)
            self.published_at.append(time.monotonic_ns())
            self.sent += 1
        if self.rate is not None and self.sent < self.count:
            self.connection.ioloop.call_later(0.0005, self._fill)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        done = tag - self.last_tag if method.multiple else 1
        now = time.monotonic_ns()
        first = self.last_tag if method.multiple else tag - 1
        self.confirm_ms += [(now - self.published_at[i]) / 1e6 for i in range(first, tag)]
        self.last_tag = max(self.last_tag, tag)
        if isinstance(method, pika.spec.Basic.Ack):
            self.confirmed += done
        else:
            self.nacked += done
        if self.confirmed + self.nacked >= self.count:
            self.last = time.monotonic_ns()
            self.connection.close()
        elif self.rate is None:
            self._fill()


def _publish(
    endpoint: Endpoint,
    queue: str,
    count: int,
    window: int,
    rate: float | None,
    out: multiprocessing.connection.Connection,
) -> None:
    if window <= 1 and rate is None:
        out.send(_publish_one_by_one(endpoint, queue, count))
    else:
        out.send(_WindowPublisher(endpoint, queue, count, window, rate).run())


def wait_for(
    end: multiprocessing.connection.Connection, process: Any, timeout: float, what: str
) -> None:
    """Until `process` has sent its result; fail at once if it died without one."""
    deadline = time.monotonic() + timeout
    while not end.poll(0.2):
        if not process.is_alive() and not end.poll(0.2):
            raise RuntimeError(f"the {what} process exited (code {process.exitcode}); see above")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {what} did not finish within {timeout:.0f} s")


# -- one run -----------------------------------------------------------------------------------


def run_hop(
    endpoint: Endpoint,
    count: int,
    window: int,
    rate: float | None = None,
    preload: bool = False,
    prefetch: int = 1000,
    timeout: float = 120,
) -> HopResult:
    """Declare a fresh durable queue, push `count` messages through it, delete it."""
    queue = f"bench.hop.{uuid.uuid4().hex[:10]}"
    connection = pika.BlockingConnection(endpoint.params())
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic"})
    ctx = multiprocessing.get_context("spawn")
    ready, subscribed = ctx.Event(), ctx.Event()
    consumer_end, consumer_out = ctx.Pipe(duplex=False)
    publisher_end, publisher_out = ctx.Pipe(duplex=False)
    consumer = ctx.Process(
        target=_consume,
        args=(endpoint, queue, count, prefetch, timeout, ready, subscribed, consumer_out),
        daemon=True,
    )
    publisher = ctx.Process(
        target=_publish, args=(endpoint, queue, count, window, rate, publisher_out), daemon=True
    )
    try:
        consumer.start()
        if not preload:
            ready.set()
            if not subscribed.wait(30):  # subscribed before the first publish
                raise TimeoutError("the consumer did not subscribe in time")
        publisher.start()
        wait_for(publisher_end, publisher, timeout, "publisher")
        first_pub, last_conf, published, nacked, confirm_ms = publisher_end.recv()
        ready.set()
        wait_for(consumer_end, consumer, timeout + 10, "consumer")
        latencies, first_recv, last_recv = consumer_end.recv()
    finally:
        for process in (publisher, consumer):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        channel.queue_delete(queue)
        connection.close()
    return HopResult(
        latencies, first_pub, last_conf, first_recv, last_recv, published, nacked, confirm_ms
    )
