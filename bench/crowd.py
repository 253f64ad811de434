"""Many users online at once, in one worker process: the crowd of scenario 5.

Each user is what a listening client is on the wire: its own AMQP connection (logged in
with its session token through the broker's HTTP auth backend), a channel with a prefetch,
and a consumer with manual acks on `inbox.<username>`. The client library holds one
blocking connection per thread, which would mean a thousand threads here; pika's
asynchronous adapter runs them all on one I/O loop instead, and the broker and the auth
service see exactly the same traffic.

The process takes commands over a pipe: `connect` (everybody, at most `concurrency`
handshakes in flight, answering the set-up rate and per-connection times), `disconnect`,
`quit`.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.channel
from pika.adapters.select_connection import IOLoop, SelectConnection

from bench.hop import Endpoint, wait_for
from protocol.topology import inbox_queue

PREFETCH = 200


class _Crowd:
    def __init__(self, ioloop: IOLoop, endpoints: list[Endpoint]) -> None:
        self.ioloop = ioloop
        self.endpoints = endpoints
        self.connections: dict[int, SelectConnection] = {}
        self._connecting: set[int] = set()  # not yet consuming
        self._done: Callable[[dict[str, Any]], None] | None = None
        self._closing: Callable[[dict[str, Any]], None] | None = None

    # -- connect -----------------------------------------------------------------------------

    def connect_all(self, concurrency: int, done: Callable[[dict[str, Any]], None]) -> None:
        self._done = done
        self._queue = list(range(len(self.endpoints)))
        self._times: list[float] = []
        self._failures: list[str] = []
        self._in_flight = 0
        self._start = time.monotonic()
        for _ in range(min(concurrency, len(self._queue))):
            self._next()

    def _next(self) -> None:
        if not self._queue:
            if self._in_flight == 0 and self._done is not None:
                done, self._done = self._done, None
                done(
                    {
                        "seconds": time.monotonic() - self._start,
                        "times_ms": self._times,
                        "failures": self._failures,
                        "connected": len(self.connections),
                    }
                )
            return
        index = self._queue.pop()
        self._in_flight += 1
        began = time.monotonic()
        endpoint = self.endpoints[index]
        params = endpoint.params()
        params.connection_attempts = 1
        params.socket_timeout = 30

        def settled(error: str | None) -> None:
            if index not in self._connecting:
                return
            self._connecting.discard(index)
            self._in_flight -= 1
            if error is None:
                self._times.append((time.monotonic() - began) * 1000)
            else:
                self._failures.append(error)
                self.connections.pop(index, None)
            self._next()

        def on_consume_ok(_frame: Any) -> None:
            settled(None)

        def on_message(ch: pika.channel.Channel, method: Any, _props: Any, _body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)

        def on_channel(channel: pika.channel.Channel) -> None:
            channel.basic_qos(
                prefetch_count=PREFETCH,
                callback=lambda _f: channel.basic_consume(
                    inbox_queue(endpoint.username), on_message, callback=on_consume_ok
                ),
            )

        def on_open(connection: SelectConnection) -> None:
            connection.channel(on_open_callback=on_channel)

        def on_open_error(_connection: Any, error: BaseException | str) -> None:
            settled(f"{type(error).__name__}: {error}")

        def on_closed(_connection: Any, reason: BaseException) -> None:
            settled(f"closed during set-up: {reason}")
            self.connections.pop(index, None)
            if self._closing is not None and not self.connections:
                closing, self._closing = self._closing, None
                closing({"closed": True})

        self._connecting.add(index)
        self.connections[index] = SelectConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_closed,
            custom_ioloop=self.ioloop,
        )

    # -- disconnect --------------------------------------------------------------------------

    def close_all(self, done: Callable[[dict[str, Any]], None]) -> None:
        if not self.connections:
            done({"closed": True})
            return
        self._closing = done
        for connection in list(self.connections.values()):
            if connection.is_open:
                connection.close()


def _serve(endpoints: list[Endpoint], pipe: multiprocessing.connection.Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    ioloop = IOLoop()
    crowd = _Crowd(ioloop, endpoints)
    loop = threading.Thread(target=ioloop.start, daemon=True)
    loop.start()
    while True:
        command, argument = pipe.recv()
        if command == "quit":
            break
        finished = threading.Event()
        answer: dict[str, Any] = {}

        def done(
            result: dict[str, Any],
            answer: dict[str, Any] = answer,
            finished: threading.Event = finished,
        ) -> None:
            answer.update(result)
            finished.set()

        if command == "connect":
            ioloop.add_callback_threadsafe(
                functools.partial(crowd.connect_all, int(argument), done)
            )
        elif command == "disconnect":
            ioloop.add_callback_threadsafe(functools.partial(crowd.close_all, done))
        if not finished.wait(600):
            answer["error"] = f"{command} did not finish within 600 s"
        pipe.send(answer)
    ioloop.add_callback_threadsafe(ioloop.stop)
    loop.join(timeout=10)


class CrowdProcess:
    """The crowd's worker process, driven from the benchmark."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._end, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(endpoints, child), daemon=True)
        self._process.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _call(self, command: str, argument: Any = None, timeout: float = 620) -> dict[str, Any]:
        self._end.send((command, argument))
        wait_for(self._end, self._process, timeout, "crowd")
        answer: dict[str, Any] = self._end.recv()
        if "error" in answer:
            raise TimeoutError(answer["error"])
        return answer

    def connect(self, concurrency: int = 50) -> dict[str, Any]:
        return self._call("connect", concurrency)

    def disconnect(self) -> None:
        self._call("disconnect")

    def close(self) -> None:
        if self._process.is_alive():
            self._end.send(("quit", None))
            self._process.join(timeout=15)
        if self._process.is_alive():
            self._process.kill()
