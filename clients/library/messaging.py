"""Send and receive direct messages over AMQP, as the signed-in user.

    conn = MessengerConnection.open(meta, "alice", token)
    answer = conn.send("bob", "hi")                  # RelayAnswer(status="accepted", id=...)
    conn.consume(store_and_show, idle_timeout=1.0)   # acks each message after the callback

One `MessengerConnection` is one pika `BlockingConnection`: use it from one thread at a
time (the thread that consumes, say); only `stop()` may be called from another thread. A
chat opens two: one that consumes, one that sends. Server ids are stable: a message the
relay handled twice (it crashed before acking) arrives twice with the same `id`, so store by
`id` and show what was not stored yet. An idle sending connection that the broker dropped
(missed heartbeats) is reopened by the next send.

Sending pipelines: each publish to the outbox is confirmed by the broker asynchronously
(tracked by sequence number) and answered by the relay on the direct reply-to, so
`send_many()` keeps a window of messages in flight instead of paying a round trip each.
pika's blocking adapter has no public asynchronous-confirm API (its confirm mode waits per
publish), so the sending channel registers its confirm and reply-to callbacks on the
underlying asynchronous channel (`BlockingChannel._impl`); they run during I/O, which also
lets `send()` work from inside a `consume()` callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import ValidationError

from clients.library.errors import (
    BrokerRefused,
    BrokerUnreachable,
    MessageRejected,
    MessengerError,
    NotConfirmed,
)
from protocol import PROTOCOL_VERSION
from protocol.accounts import Meta
from protocol.messages import (
    MAX_BODY_BYTES,
    PROTOCOL_HEADER,
    SENT_MS_HEADER,
    DeliveredMessage,
    ReceiptNotice,
    ReceiptStatus,
    RelayAnswer,
)
from protocol.pika_io import coalesce_pika_writes, describe_pika_error
from protocol.topology import (
    CONTENT_TYPE,
    OUTBOX_EXCHANGE,
    REPLY_TO,
    TYPE_MESSAGE,
    TYPE_RECEIPT,
    TYPE_RECEIPT_NOTICE,
    TYPE_SEND,
    inbox_queue,
)

logger = logging.getLogger(__name__)

CONSUME_PREFETCH = 200
DEFAULT_WINDOW = 1000


class MessengerConnection:
    """A user's AMQP connection: send through the relay, consume the own inbox."""

    def __init__(self, parameters: pika.ConnectionParameters, username: str) -> None:
        """Use `open()`; this connects at once."""
        self.username = username
        self._parameters = parameters
        self._stop = threading.Event()
        self._consumer_thread: int | None = None
        coalesce_pika_writes()
        self._connection = _connect(parameters, username)
        self._publisher: _Publisher | None = None

    @classmethod
    def open(cls, meta: Meta, username: str, secret: str) -> MessengerConnection:
        """Log in to the broker `meta` names; `secret` is a session token or the password."""
        parts = urlsplit(meta.amqp_url)
        if parts.scheme != "amqp" or not parts.hostname:
            raise BrokerUnreachable(
                f"the server announced an unusable broker URL {meta.amqp_url!r}"
            )
        parameters = pika.ConnectionParameters(
            host=parts.hostname,
            port=parts.port or 5672,
            virtual_host=meta.vhost,
            credentials=pika.PlainCredentials(username, secret),
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=30,
            heartbeat=60,
            client_properties={"connection_name": f"messenger client {username}"},
        )
        return cls(parameters, username)

    # -- sending ---------------------------------------------------------------------------

    def send(self, to: str, text: str, timeout: float = 5.0) -> RelayAnswer:
        """Send one message and wait for the relay's answer.

        Returns the `accepted` answer (server `id`, `sent_at`). Raises MessageRejected
        (`.reason`: unknown_recipient, invalid, inbox_full), NotConfirmed when the broker
        holds the message but the relay did not answer in time, BrokerUnreachable or
        BrokerRefused.
        """
        with self._broker_errors():
            publisher = self._ready_publisher()
            client_id = publisher.publish_send(to, text)
            answers = publisher.collect([client_id], timeout)
        answer = answers.get(client_id)
        if answer is None:
            raise publisher.unanswered_error(client_id, timeout)
        return _raise_if_rejected(answer)

    def publish(self, to: str, text: str) -> str:
        """Publish without waiting; returns the client id to `collect()` the answer by."""
        with self._broker_errors():
            return self._ready_publisher().publish_send(to, text)

    def collect(self, client_ids: Iterable[str], timeout: float = 5.0) -> dict[str, RelayAnswer]:
        """Wait up to `timeout` s for the relay's answers to what `publish()` sent; returns
        those that came (accepted and rejected alike), keyed by client id."""
        with self._broker_errors():
            return self._ready_publisher().collect(list(client_ids), timeout)

    def send_many(
        self,
        messages: Iterable[tuple[str, str]],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float = 30.0,
    ) -> list[RelayAnswer]:
        """Send (to, text) pairs with up to `window` unanswered at a time; the answers in
        order, rejected ones included (not raised). NotConfirmed when the relay stays silent
        for `timeout` s while answers are due."""
        with self._broker_errors():
            publisher = self._ready_publisher()
            order: list[str] = []
            answers: dict[str, RelayAnswer] = {}
            waiting: list[str] = []  # published, unanswered, in order
            for to, text in messages:
                if len(waiting) >= window:
                    waiting = self._drain(publisher, waiting, answers, timeout, until=window // 2)
                client_id = publisher.publish_send(to, text)
                order.append(client_id)
                waiting.append(client_id)
            self._drain(publisher, waiting, answers, timeout, until=0)
        return [answers[client_id] for client_id in order]

    def _drain(
        self,
        publisher: _Publisher,
        waiting: list[str],
        answers: dict[str, RelayAnswer],
        timeout: float,
        *,
        until: int,
    ) -> list[str]:
        """Pump events until at most `until` of `waiting` are unanswered."""
        deadline = time.monotonic() + timeout
        while len(waiting) > until:
            got = publisher.take_answers(waiting)
            if got:
                answers.update(got)
                waiting = [c for c in waiting if c not in got]
                deadline = time.monotonic() + timeout
                continue
            if time.monotonic() > deadline:
                raise publisher.unanswered_error(waiting[0], timeout)
            self._connection.process_data_events(time_limit=0.05)
        return waiting

    def send_receipt(self, message_id: str, to: str, status: ReceiptStatus = "delivered") -> None:
        """Tell `to` (the message's sender) that its message `message_id` was delivered/read.
        Fire and forget: the broker confirms in the background; nothing is answered."""
        with self._broker_errors():
            self._ready_publisher().publish_receipt(message_id, to, status)

    def _ready_publisher(self) -> _Publisher:
        self._ensure_open()
        if self._publisher is None:
            self._publisher = _Publisher(self._connection, self.username)
        return self._publisher

    # -- receiving -------------------------------------------------------------------------

    def consume(
        self,
        on_message: Callable[[DeliveredMessage], None],
        on_receipt: Callable[[ReceiptNotice], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> int:
        """Deliver the own inbox to the callbacks; ack each message after its callback
        returns (store it first). Runs until `stop()`, or until nothing arrived for
        `idle_timeout` s. Returns how many messages and receipts were handled. If a callback
        raises, the exception propagates and that message (and any prefetched after it)
        stays in the inbox for the next time. A `stop()` that comes before `consume()` starts
        makes it return at once."""
        handled = 0
        last_activity = time.monotonic()

        def on_delivery(
            channel: BlockingChannel,
            method: pika.spec.Basic.Deliver,
            props: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            nonlocal handled, last_activity
            _dispatch(props, body, on_message, on_receipt)
            channel.basic_ack(method.delivery_tag)
            handled += 1
            last_activity = time.monotonic()

        self._consumer_thread = threading.get_ident()
        with self._broker_errors():
            self._ensure_open()
            channel = self._connection.channel()
            try:
                channel.basic_qos(prefetch_count=CONSUME_PREFETCH)
                channel.basic_consume(inbox_queue(self.username), on_delivery)
                while not self._stop.is_set():
                    wait = 0.5
                    if idle_timeout is not None:
                        left = last_activity + idle_timeout - time.monotonic()
                        if left <= 0:
                            break
                        wait = min(wait, left)
                    self._connection.process_data_events(time_limit=wait)
            finally:
                self._stop.clear()
                self._consumer_thread = None
                # Closing the channel hands back anything prefetched but not yet handled.
                with contextlib.suppress(pika.exceptions.AMQPError):
                    if channel.is_open:
                        channel.close()
        return handled

    def stop(self) -> None:
        """Make `consume()` return: at once from another thread, within half a second from
        a signal handler or a callback on the consuming thread."""
        self._stop.set()
        if self._consumer_thread not in (None, threading.get_ident()):
            with contextlib.suppress(Exception):
                self._connection.add_callback_threadsafe(lambda: None)  # wake the I/O loop

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._connection.is_open:
                self._connection.close()

    def __enter__(self) -> MessengerConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        """Reconnect (before publishing anything) when the broker dropped an idle connection."""
        if self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._connection.process_data_events(0)  # notice a close that already happened
        if not self._connection.is_open:
            logger.info("reconnecting to the broker")
            self._publisher = None
            self._connection = _connect(self._parameters, self.username)

    @contextlib.contextmanager
    def _broker_errors(self) -> Iterator[None]:
        try:
            yield
        except MessengerError:
            raise
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._publisher = None
            raise _channel_error(exc, self.username) from None
        except pika.exceptions.AMQPConnectionError as exc:
            self._publisher = None
            raise _connection_error(exc, self._parameters, self.username) from None
        except pika.exceptions.AMQPError as exc:
            self._publisher = None
            raise BrokerUnreachable(f"lost the connection to the broker ({_text(exc)})") from None


class _Publisher:
    """The sending channel: async confirms by sequence number, answers by client id."""

    def __init__(self, connection: pika.BlockingConnection, username: str) -> None:
        self._connection = connection
        self._username = username
        self._channel = connection.channel()
        impl: pika.channel.Channel = self._channel._impl
        self._seq = 0
        self._unconfirmed: dict[int, str] = {}
        self.confirmed: set[str] = set()
        self.nacked: set[str] = set()
        self._answers: dict[str, RelayAnswer] = {}
        self._awaited: set[str] = set()
        self._wake_scheduled = False
        ready: list[bool] = []
        impl.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _f: ready.append(True)
        )
        impl.basic_consume(
            REPLY_TO, self._on_answer, auto_ack=True, callback=lambda _f: ready.append(True)
        )
        deadline = time.monotonic() + 10
        while len(ready) < 2:
            if time.monotonic() > deadline:
                raise BrokerUnreachable("the broker did not open a sending channel in time")
            connection.process_data_events(time_limit=0.1)

    def publish_send(self, to: str, text: str) -> str:
        client_id = str(uuid.uuid4())
        body = json.dumps({"to": to, "text": text}, ensure_ascii=False).encode()
        if len(body) > MAX_BODY_BYTES:
            raise MessageRejected(
                f"the message is too long ({len(body)} bytes; at most {MAX_BODY_BYTES})", "invalid"
            )
        self._awaited.add(client_id)
        self._publish(body, TYPE_SEND, client_id, reply_to=REPLY_TO)
        return client_id

    def publish_receipt(self, message_id: str, to: str, status: str) -> None:
        body = json.dumps({"message_id": message_id, "to": to, "status": status}).encode()
        self._publish(body, TYPE_RECEIPT, str(uuid.uuid4()), reply_to=None)

    def _publish(self, body: bytes, kind: str, client_id: str, *, reply_to: str | None) -> None:
        props = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            user_id=self._username,
            message_id=client_id,
            reply_to=reply_to,
            type=kind,
            headers={
                PROTOCOL_HEADER: PROTOCOL_VERSION,
                SENT_MS_HEADER: time.time_ns() // 1_000_000,
            },
        )
        # Routing key = own name: the consistent-hash outbox keeps a sender on one shard.
        self._channel.basic_publish(OUTBOX_EXCHANGE, self._username, body, props)
        self._seq += 1
        self._unconfirmed[self._seq] = client_id

    def collect(self, client_ids: list[str], timeout: float) -> dict[str, RelayAnswer]:
        deadline = time.monotonic() + timeout
        found: dict[str, RelayAnswer] = {}
        pending = list(client_ids)
        while True:
            found.update(self.take_answers(pending))
            pending = [c for c in pending if c not in found]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            if any(c in self.nacked for c in pending):
                break
            self._connection.process_data_events(time_limit=min(left, 0.1))
        for client_id in pending:  # no longer awaited: a late answer is dropped
            self._awaited.discard(client_id)
        return found

    def take_answers(self, client_ids: Iterable[str]) -> dict[str, RelayAnswer]:
        got = {}
        for client_id in client_ids:
            answer = self._answers.pop(client_id, None)
            if answer is not None:
                got[client_id] = answer
                self._awaited.discard(client_id)
                self.confirmed.discard(client_id)
        return got

    def unanswered_error(self, client_id: str, timeout: float) -> MessengerError:
        self._awaited.discard(client_id)
        if client_id in self.nacked:
            self.nacked.discard(client_id)
            return BrokerRefused("the broker did not accept the message; it was not sent")
        if client_id in self.confirmed:
            self.confirmed.discard(client_id)
            return NotConfirmed(
                f"the relay did not answer within {timeout:g} s; the broker holds the message",
                client_id,
            )
        return BrokerUnreachable(
            f"the broker did not confirm the message within {timeout:g} s; "
            "it may not have been sent"
        )

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            done = [seq for seq in self._unconfirmed if seq <= method.delivery_tag]
        else:
            done = [method.delivery_tag]
        for seq in done:
            client_id = self._unconfirmed.pop(seq, None)
            if client_id is not None and client_id in self._awaited:
                (self.confirmed if ack else self.nacked).add(client_id)
            elif client_id is not None and not ack:
                logger.warning("the broker refused a receipt")

    def _on_answer(
        self,
        _channel: Any,
        _method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        try:
            answer = RelayAnswer.model_validate_json(body)
        except ValidationError:
            logger.warning("ignored an answer that could not be read")
            return
        client_id = answer.client_id or props.correlation_id
        if client_id in self._awaited:
            self._answers[client_id] = answer
            self._wake()

    def _wake(self) -> None:
        """End the current `process_data_events()` wait now: this callback runs below
        BlockingConnection's dispatch, so without a ready event it would sleep on."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._connection.call_later(0, self._woken)

    def _woken(self) -> None:
        self._wake_scheduled = False


def _dispatch(
    props: pika.spec.BasicProperties,
    body: bytes,
    on_message: Callable[[DeliveredMessage], None],
    on_receipt: Callable[[ReceiptNotice], None] | None,
) -> None:
    kind = props.type or TYPE_MESSAGE
    try:
        if kind == TYPE_MESSAGE:
            message = DeliveredMessage.model_validate_json(body)
        elif kind == TYPE_RECEIPT_NOTICE:
            notice = ReceiptNotice.model_validate_json(body)
            if on_receipt is not None:
                on_receipt(notice)
            return
        else:
            logger.warning("skipped an inbox message of unknown type %r", kind)
            return
    except ValidationError:
        logger.warning("skipped an inbox message that could not be read")
        return
    on_message(message)


def _raise_if_rejected(answer: RelayAnswer) -> RelayAnswer:
    if answer.status == "accepted":
        return answer
    reason = answer.reason or "invalid"
    raise MessageRejected(answer.detail or f"the relay rejected the message ({reason})", reason)


def _connect(parameters: pika.ConnectionParameters, username: str) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPConnectionError as exc:
        raise _connection_error(exc, parameters, username) from None
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnreachable(f"cannot connect to the broker ({_text(exc)})") from None


def _connection_error(
    exc: pika.exceptions.AMQPConnectionError, parameters: pika.ConnectionParameters, username: str
) -> MessengerError:
    where = f"{parameters.host}:{parameters.port}"
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return BrokerRefused(
            f"the broker at {where} refused the login of {username!r}",
            hint="log in again: the session may have expired or been revoked",
        )
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return BrokerRefused(f"the broker at {where} denied {username!r} access to its vhost")
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        if exc.reply_code in (403, 530):
            return BrokerRefused(f"the broker refused {username!r}: {exc.reply_text}")
        return BrokerUnreachable(f"the broker at {where} closed the connection ({exc.reply_text})")
    return BrokerUnreachable(
        f"cannot reach the broker at {where} ({_text(exc)})", hint="is the server running?"
    )


def _channel_error(exc: pika.exceptions.ChannelClosedByBroker, username: str) -> MessengerError:
    if exc.reply_code == 404:
        return BrokerRefused(
            f"the broker has no inbox for {username!r} ({exc.reply_text})",
            hint="sign up first, or ask the operator to re-import the user",
        )
    if exc.reply_code in (403, 406):
        return BrokerRefused(f"the broker refused the operation: {exc.reply_text}")
    return BrokerUnreachable(f"the broker closed the channel: {exc.reply_text}")


_text = describe_pika_error
