"""Consuming the own inbox, a batch at a time, across lost connections.

    consumer = InboxConsumer(connection)
    consumer.run(store_many_and_show)          # a list per I/O turn, one ack after it

Server ids are stable: a message the relay handled twice (it crashed before acking) arrives
twice with the same `id`, so store by `id` and show what was not stored yet. When the
connection is lost, `run()` reconnects (to the next node first) and subscribes again; what
was delivered but not acked comes again, with the same server id.

The queue is `inbox.<username>` unless given: a client that gets its queue's name from the
server (one queue per device, say) passes it here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from broker.errors import describe, retryable
from clients.library.batches import Delivery, hand_over
from clients.library.connection import RECONNECT_WINDOW_SECONDS, Connection
from clients.library.errors import BrokerUnreachable, MessengerError
from protocol.messages import DeliveredMessage, ReceiptNotice
from protocol.topology import inbox_queue

CONSUME_PREFETCH = 200


class InboxConsumer:
    def __init__(self, connection: Connection, queue: str | None = None) -> None:
        self._connection = connection
        self.queue = queue or inbox_queue(connection.username)
        # Set by stop(); ends run() and any wait to reconnect (also a Sender's given it).
        self.stopping = threading.Event()
        self._thread: int | None = None
        self._handled = 0  # by the current run(), across reconnects

    def run(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt: Callable[[ReceiptNotice], None] | None = None,
        *,
        idle_timeout: float | None = None,
        give_up_after: float = RECONNECT_WINDOW_SECONDS,
        on_lost: Callable[[MessengerError], None] | None = None,
        on_back: Callable[[], None] | None = None,
    ) -> int:
        """Deliver the inbox to the callbacks, in order, a batch at a time: what one I/O
        turn brought (at most CONSUME_PREFETCH) is one `on_messages(list)` call (receipt
        notices in between go to `on_receipt`). Once they returned, the whole batch is acked
        with one `basic_ack(multiple=True)`: store it (one commit) before returning. Runs
        until `stop()`, or until nothing arrived for `idle_timeout` s after the broker
        confirmed the subscription. Returns how many messages and receipts were handled. If
        a callback raises, the exception propagates and the messages of that call (and any
        delivered after them) stay in the inbox for the next time. A `stop()` that comes
        before this starts makes it return at once.

        A lost connection is reconnected for up to `give_up_after` s (connection.FOREVER:
        until stopped) before BrokerUnreachable; `on_lost(error)` and `on_back()` say when
        it went and when it came back."""
        self._thread = threading.get_ident()
        self._handled = 0
        try:
            with self._connection.translated_errors():
                self._connection.ensure_open()
                while True:
                    generation = self._connection.generation
                    try:
                        self._serve(on_messages, on_receipt, idle_timeout)
                        break
                    except pika.exceptions.AMQPError as exc:
                        if self.stopping.is_set():
                            break
                        if not retryable(exc):
                            raise
                        if self._connection.generation != generation and self._connection.is_open:
                            continue  # a send from a callback failed over: subscribe there
                        if on_lost is not None:
                            on_lost(BrokerUnreachable(f"lost the broker ({describe(exc)})"))
                        try:
                            self._connection.reconnect(exc, give_up_after, self.stopping)
                        except BrokerUnreachable:
                            if self.stopping.is_set():
                                break
                            raise
                        if on_back is not None:
                            on_back()
        finally:
            self.stopping.clear()
            self._thread = None
        return self._handled

    def stop(self) -> None:
        """Make `run()` return: at once from another thread, within half a second from a
        signal handler or a callback on the consuming thread."""
        self.stopping.set()
        if self._thread not in (None, threading.get_ident()):
            self._connection.wake()

    def _serve(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt: Callable[[ReceiptNotice], None] | None,
        idle_timeout: float | None,
    ) -> None:
        """Subscribe on a new channel and hand over batches until stopped or idle."""
        delivered: list[Delivery] = []

        def on_delivery(
            _channel: BlockingChannel,
            method: pika.spec.Basic.Deliver,
            props: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            delivered.append(Delivery(method.delivery_tag, props.type, body))

        channel = self._connection.channel()
        try:
            channel.basic_qos(prefetch_count=CONSUME_PREFETCH)
            # Returns once the broker confirmed it (consume-ok): the idle clock starts then,
            # so a slow subscription on a loaded broker is not mistaken for idle.
            channel.basic_consume(self.queue, on_delivery)
            last_activity = time.monotonic()

            def idle() -> bool:
                return idle_timeout is not None and time.monotonic() - last_activity >= idle_timeout

            while not self.stopping.is_set() and not idle():
                wait = 0.5
                if idle_timeout is not None:
                    wait = min(wait, max(0.0, last_activity + idle_timeout - time.monotonic()))
                self._connection.pump(wait)
                if delivered:
                    batch = delivered[:]
                    delivered.clear()
                    self._handled += hand_over(
                        batch,
                        on_messages,
                        on_receipt,
                        lambda tag: channel.basic_ack(tag, multiple=True),
                    )
                    last_activity = time.monotonic()
        finally:
            # Closing the channel hands back anything delivered but not yet handled.
            with contextlib.suppress(pika.exceptions.AMQPError):
                if channel.is_open:
                    channel.close()
