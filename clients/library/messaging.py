"""Send and receive direct messages over AMQP, as the signed-in user: one object for both.

    conn = MessengerConnection.open(meta, "alice", token)
    answer = conn.send("bob", "hi")                  # RelayAnswer(status="accepted", id=...)
    conn.consume(store_and_show, idle_timeout=1.0)   # acks each message after the callback
    conn.consume_batches(store_many_and_show)        # a list per I/O turn, one ack after it

A thin facade over the library's parts, for the CLI's one-shot commands, the benchmarks and
the tests: a `Connection` (connection.py: nodes, failover, errors) with a `Sender`
(sender.py, whose methods it has) and an `InboxConsumer` (consumer.py) on it. One
`MessengerConnection` is one broker connection: use it from one thread at a time (the
thread that consumes, say); only `stop()` may be called from another thread. A send from
inside a consume callback (a receipt) works.
"""

from __future__ import annotations

from collections.abc import Callable

from clients.library.connection import RECONNECT_WINDOW_SECONDS, Connection
from clients.library.consumer import InboxConsumer
from clients.library.sender import Sender
from protocol.accounts import Meta
from protocol.messages import DeliveredMessage, ReceiptNotice


class MessengerConnection(Sender):
    """A user's AMQP connection: send through the relay (Sender's methods: `send`,
    `publish`, `collect`, `send_many`, `send_receipt`), consume the own inbox."""

    def __init__(
        self, connection: Connection, reconnect_window: float = RECONNECT_WINDOW_SECONDS
    ) -> None:
        """`reconnect_window`: how long a lost connection is reconnected, when consuming
        and when sending (connection.FOREVER: until stopped)."""
        self.connection = connection
        self.username = connection.username
        self.inbox = InboxConsumer(connection)
        self.reconnect_window = reconnect_window
        # A consumer's stop() also ends a wait to reconnect for a receipt it is sending.
        super().__init__(
            connection, interrupt=self.inbox.stopping, reconnect_window=reconnect_window
        )

    @classmethod
    def open(cls, meta: Meta, username: str, secret: str) -> MessengerConnection:
        """Log in to the broker `meta` names (any of its nodes); `secret` is a session token
        or the password."""
        return cls(Connection.open(meta, username, secret))

    def consume(
        self,
        on_message: Callable[[DeliveredMessage], None],
        on_receipt: Callable[[ReceiptNotice], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> int:
        """`consume_batches()` one message at a time: `on_message` is called for each, and
        the batch is acked once it has returned for all of them."""

        def on_messages(messages: list[DeliveredMessage]) -> None:
            for message in messages:
                on_message(message)

        return self.inbox.run(
            on_messages, on_receipt, idle_timeout=idle_timeout, give_up_after=self.reconnect_window
        )

    def consume_batches(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt: Callable[[ReceiptNotice], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> int:
        """InboxConsumer.run: a batch per I/O turn, acked once the callbacks returned."""
        return self.inbox.run(
            on_messages, on_receipt, idle_timeout=idle_timeout, give_up_after=self.reconnect_window
        )

    def stop(self) -> None:
        """Make `consume()` return (InboxConsumer.stop)."""
        self.inbox.stop()

    def close(self) -> None:
        self.inbox.stopping.set()
        self.connection.close()

    def __enter__(self) -> MessengerConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
