"""Send and receive direct messages over AMQP, as the signed-in user.

    conn = MessengerConnection.open(meta, "alice", token)
    answer = conn.send("bob", "hi")                  # RelayAnswer(status="accepted", id=...)
    conn.consume(store_and_show, idle_timeout=1.0)   # acks each message after the callback
    conn.consume_batches(store_many_and_show)        # a list per I/O turn, one ack after it

One `MessengerConnection` is one pika `BlockingConnection`: use it from one thread at a
time (the thread that consumes, say); only `stop()` may be called from another thread. A
chat opens two: one that consumes, one that sends. Server ids are stable: a message the
relay handled twice (it crashed before acking) arrives twice with the same `id`, so store by
`id` and show what was not stored yet. An idle sending connection that the broker dropped
(missed heartbeats) is reopened by the next send.

Failover: `GET /v1/meta` lists every broker node (`amqp_urls`). `open()` connects to the
first that answers; when the connection is lost, the next operation moves to the next node
(no wait until every node has failed in a row). `consume()` re-subscribes there and carries
on; what was delivered but not acked comes again with the same server id. Sending keeps
each message until the relay has answered it: after a reconnect, everything unanswered is
published again with the same client `message_id` and send time, so the relay gives it the
same server id. That includes messages the broker had confirmed, because the relay's answer
to them went to the lost connection's reply-to and is gone; the recipient may then get such
a message twice, with one id, and shows it once. Without a lost connection nothing is
published twice: a message the broker nacked is published again alone, on a new channel,
while the old channel stays open for the confirms and answers of the rest.

Sending pipelines: each publish to the outbox is confirmed by the broker asynchronously
(tracked by sequence number) and answered by the relay on the direct reply-to, so
`send_many()` keeps a window of messages in flight instead of paying a round trip each.
pika's blocking adapter has no public asynchronous-confirm API (its confirm mode waits per
publish), so the sending channel registers its confirm and reply-to callbacks on the
underlying asynchronous channel (`BlockingChannel._impl`); they run during I/O, which also
lets `send()` work from inside a `consume()` callback. Publishes and acks go to that
asynchronous channel too, which only queues their frames: they are written in the next I/O
turn (every FLUSH_EVERY publishes at the latest), several messages per `send()` system call,
where `BlockingChannel` would flush and poll once per call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from protocol.ids import stable_id
from protocol.messages import (
    MAX_BODY_BYTES,
    PROTOCOL_HEADER,
    SENT_MS_HEADER,
    DeliveredMessage,
    ReceiptNotice,
    ReceiptStatus,
    RelayAnswer,
)
from protocol.nodes import NodeRotation, parse_amqp_url
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
# Publishes are queued on the channel and written in I/O turns: at least every this many.
FLUSH_EVERY = 64
# A message source that made send_many() wait longer than this is not flat out.
SLOW_SOURCE_SECONDS = 0.0005
# `_ensure_open` polls the socket (to notice a close the broker made meanwhile) only when
# the connection has seen no I/O for this long: a busy sender pays no poll per message.
IDLE_CHECK_SECONDS = 1.0
# A nacked outbox publish (a quorum shard between leaders nacks for a few seconds) is
# published again after 0.5, 1, 2, 4, 5, 5 ... s, this many times at most.
MAX_NACK_RETRIES = 8
# How long `consume()` keeps reconnecting (to each node in turn) before it gives up.
RECONNECT_WINDOW_SECONDS = 60.0
RECONNECT_MAX_DELAY_SECONDS = 5.0


class MessengerConnection:
    """A user's AMQP connection: send through the relay, consume the own inbox."""

    def __init__(
        self,
        parameters: pika.ConnectionParameters | Sequence[pika.ConnectionParameters],
        username: str,
    ) -> None:
        """Use `open()`; this connects at once, to the first of `parameters` that answers."""
        self.username = username
        if isinstance(parameters, pika.ConnectionParameters):
            parameters = [parameters]
        self._nodes = NodeRotation(list(parameters), max_delay=RECONNECT_MAX_DELAY_SECONDS)
        self._stop = threading.Event()
        self._consumer_thread: int | None = None
        self._sends = _SendState()
        coalesce_pika_writes()
        self._connection = self._connect_any(deadline=None)
        self._io_at = time.monotonic()  # the last I/O turn on `_connection`
        self._publisher: _Publisher | None = None
        # Sending channels given up after a nack: kept open (on the same connection) until
        # the relay has answered what they published, so those are not published again.
        self._retired: list[_Publisher] = []

    @classmethod
    def open(cls, meta: Meta, username: str, secret: str) -> MessengerConnection:
        """Log in to the broker `meta` names (any of its nodes); `secret` is a session token
        or the password."""
        parameters = []
        for url in meta.broker_urls():
            try:
                host, port = parse_amqp_url(url)
            except ValueError:
                raise BrokerUnreachable(
                    f"the server announced an unusable broker URL {url!r}"
                ) from None
            parameters.append(
                pika.ConnectionParameters(
                    host=host,
                    port=port,
                    virtual_host=meta.vhost,
                    credentials=pika.PlainCredentials(username, secret),
                    connection_attempts=1,
                    socket_timeout=5,
                    blocked_connection_timeout=30,
                    heartbeat=60,
                    client_properties={"connection_name": f"messenger client {username}"},
                )
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
            client_id = self._publish_send(to, text, timeout)
            answers = self._collect([client_id], timeout, forget_missing=False)
        answer = answers.get(client_id)
        if answer is None:
            raise self._sends.unanswered_error(client_id, timeout, self.username)
        return _raise_if_rejected(answer)

    def publish(self, to: str, text: str) -> str:
        """Publish without waiting; returns the client id to `collect()` the answer by."""
        with self._broker_errors():
            client_id = self._publish_send(to, text, 5.0)
            self._flush(5.0)
            return client_id

    def collect(self, client_ids: Iterable[str], timeout: float = 5.0) -> dict[str, RelayAnswer]:
        """Wait up to `timeout` s for the relay's answers to what `publish()` sent; returns
        those that came (accepted and rejected alike), keyed by client id."""
        with self._broker_errors():
            return self._collect(list(client_ids), timeout)

    def _publish_send(self, to: str, text: str, timeout: float) -> str:
        publisher = self._publisher_now(timeout)
        outgoing = self._sends.new_send(to, text)
        with self._failover(timeout):  # a failover publishes it again, with the rest
            publisher.publish(outgoing)
        return outgoing.client_id

    def _flush(self, timeout: float) -> None:
        """Write what is queued (publishes, acks) in one I/O turn, without waiting."""
        with self._failover(timeout):
            self._connection.process_data_events(0)
            self._io_at = time.monotonic()

    def _publisher_now(self, timeout: float) -> _Publisher:
        """The sending channel; a new one first publishes again what is unanswered."""
        with self._failover(timeout):
            return self._ready_publisher()
        return self._ready_publisher()  # failed over just now

    def _collect(
        self, client_ids: list[str], timeout: float, *, forget_missing: bool = True
    ) -> dict[str, RelayAnswer]:
        deadline = time.monotonic() + timeout
        found: dict[str, RelayAnswer] = {}
        pending = list(client_ids)
        while True:
            found.update(self._sends.take_answers(pending))
            pending = [c for c in pending if c not in found]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            if not self._publish_nacked_again(pending):
                break
            self._pump(min(left, 0.1), timeout)
        for client_id in pending if forget_missing else ():
            self._sends.forget(client_id)  # no longer awaited: a late answer is dropped
        return found

    def _publish_nacked_again(self, client_ids: list[str]) -> bool:
        """Publish again what the broker nacked (it took no responsibility: a quorum shard
        may be between leaders), on a fresh channel, after a growing delay; False once one
        has been nacked MAX_NACK_RETRIES times. Only the nacked messages are published
        again: the rest were confirmed (or are still on their way) on the old channel, which
        stays open until the relay has answered them."""
        now = time.monotonic()
        due: list[_Outgoing] = []
        for client_id in [c for c in client_ids if c in self._sends.nacked]:
            outgoing = self._sends.outgoing[client_id]
            if outgoing.nacks >= MAX_NACK_RETRIES:
                return False
            if outgoing.retry_at is None:
                outgoing.retry_at = now + min(5.0, 0.5 * 2.0**outgoing.nacks)
            if now >= outgoing.retry_at:
                outgoing.nacks += 1
                outgoing.retry_at = None
                due.append(outgoing)
        if due:
            # A channel's view of a quorum queue can stay on a leader that is gone: publish
            # them on a new channel.
            logger.info("the broker refused %d messages; publishing them again", len(due))
            self._retire_publisher()
            with self._failover(5.0):
                self._ensure_open()
                self._publisher = _Publisher(
                    self._connection, self.username, self._sends, again=due
                )
        return True

    def _retire_publisher(self) -> None:
        """Keep the current sending channel for the answers it still awaits; close the
        retired ones that await none."""
        if self._publisher is not None:
            self._retired.append(self._publisher)
            self._publisher = None
        keep = []
        for publisher in self._retired:
            if publisher.awaits_anything():
                keep.append(publisher)
            else:
                publisher.close()
        self._retired = keep

    def _pump(self, time_limit: float, timeout: float) -> None:
        """Process I/O (confirms, answers) for up to `time_limit` s; fail over if the
        connection is lost, publishing everything unanswered again."""
        with self._failover(timeout):
            if self._publisher is None:  # a send from inside consume() after its failover
                self._ready_publisher()
            self._connection.process_data_events(time_limit=time_limit)
            self._io_at = time.monotonic()

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
            order: list[str] = []
            answers: dict[str, RelayAnswer] = {}
            waiting: list[str] = []  # published, unanswered, in order
            pairs = iter(messages)
            # Publishes leave in batches only while `messages` has proven to yield them flat
            # out (FLUSH_EVERY fast pulls in a row). Until then, and as soon as it makes us
            # wait, what was published is written before asking it for more: a paced source
            # (a person typing) must not leave its last message queued in the client.
            fast_pulls, unwritten = 0, False
            while True:
                if unwritten and fast_pulls < FLUSH_EVERY:
                    self._flush(timeout)
                    unwritten = False
                asked = time.monotonic()
                pair = next(pairs, None)
                if pair is None:
                    break
                fast = time.monotonic() - asked <= SLOW_SOURCE_SECONDS
                fast_pulls = fast_pulls + 1 if fast else 0
                if len(waiting) >= window:
                    waiting = self._drain(waiting, answers, timeout, until=window // 2)
                client_id = self._publish_send(*pair, timeout)
                unwritten = True
                order.append(client_id)
                waiting.append(client_id)
            self._drain(waiting, answers, timeout, until=0)
        return [answers[client_id] for client_id in order]

    def _drain(
        self,
        waiting: list[str],
        answers: dict[str, RelayAnswer],
        timeout: float,
        *,
        until: int,
    ) -> list[str]:
        """Pump events until at most `until` of `waiting` are unanswered."""
        deadline = time.monotonic() + timeout
        unanswered = dict.fromkeys(waiting)  # ordered; O(1) removal per answer
        while len(unanswered) > until:
            arrived = [c for c in self._sends.answers if c in unanswered]
            if arrived:
                got = self._sends.take_answers(arrived)
                answers.update(got)
                for client_id in got:
                    del unanswered[client_id]
                deadline = time.monotonic() + timeout
                continue
            if time.monotonic() > deadline or (
                self._sends.nacked and not self._publish_nacked_again(list(unanswered))
            ):
                first = next((c for c in unanswered if c in self._sends.nacked), None)
                first = first or next(iter(unanswered))
                raise self._sends.unanswered_error(first, timeout, self.username)
            connection = self._connection
            self._pump(0.05, timeout)
            if self._connection is not connection:  # failed over: the relay needs time again
                deadline = time.monotonic() + timeout
        return list(unanswered)

    def send_receipt(self, message_id: str, to: str, status: ReceiptStatus = "delivered") -> None:
        """Tell `to` (the message's sender) that its message `message_id` was delivered/read.
        Fire and forget: the broker confirms in the background; nothing is answered."""
        with self._broker_errors():
            publisher = self._publisher_now(5.0)
            outgoing = self._sends.new_receipt(message_id, to, status)
            with self._failover(5.0):
                publisher.publish(outgoing)

    def _ready_publisher(self) -> _Publisher:
        self._ensure_open()
        if self._publisher is None:
            self._publisher = _Publisher(self._connection, self.username, self._sends)
        return self._publisher

    # -- receiving -------------------------------------------------------------------------

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

        return self.consume_batches(on_messages, on_receipt, idle_timeout=idle_timeout)

    def consume_batches(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt: Callable[[ReceiptNotice], None] | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> int:
        """Deliver the own inbox to the callbacks, in order, a batch at a time: what one
        I/O turn brought (at most CONSUME_PREFETCH) is one `on_messages(list)` call (receipt
        notices in between go to `on_receipt`). Once they returned, the whole batch is acked
        with one `basic_ack(multiple=True)`: store it (one commit) before returning. Runs
        until `stop()`, or until nothing arrived for `idle_timeout` s after the broker
        confirmed the subscription. Returns how many messages and receipts were handled. If
        a callback raises, the exception propagates and the messages of that call (and any
        delivered after them) stay in the inbox for the next time. A `stop()` that comes
        before this starts makes it return at once. When the connection is lost, it
        reconnects (to the next node first) and subscribes again, for up to
        RECONNECT_WINDOW_SECONDS before it raises BrokerUnreachable."""
        handled = 0
        last_activity = time.monotonic()
        delivered: list[tuple[int, pika.spec.BasicProperties, bytes]] = []

        def on_delivery(
            _channel: BlockingChannel,
            method: pika.spec.Basic.Deliver,
            props: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            delivered.append((method.delivery_tag, props, body))

        def idle() -> bool:
            return idle_timeout is not None and time.monotonic() - last_activity >= idle_timeout

        def subscribe_and_serve() -> None:
            nonlocal handled, last_activity
            delivered.clear()  # those of a lost channel come again
            channel = self._connection.channel()
            try:
                channel.basic_qos(prefetch_count=CONSUME_PREFETCH)
                # Returns once the broker confirmed it (consume-ok): the idle clock starts
                # then, so a slow subscription on a loaded broker is not mistaken for idle.
                channel.basic_consume(inbox_queue(self.username), on_delivery)
                last_activity = time.monotonic()
                while not self._stop.is_set() and not idle():
                    wait = 0.5
                    if idle_timeout is not None:
                        wait = min(wait, max(0.0, last_activity + idle_timeout - time.monotonic()))
                    self._connection.process_data_events(time_limit=wait)
                    self._io_at = time.monotonic()
                    if delivered:
                        batch = delivered[:]
                        delivered.clear()
                        handled += _handle_batch(channel, batch, on_messages, on_receipt)
                        last_activity = time.monotonic()
            finally:
                # Closing the channel writes the acks queued before it, and hands back
                # anything delivered but not yet handled.
                with contextlib.suppress(pika.exceptions.AMQPError):
                    if channel.is_open:
                        channel.close()

        self._consumer_thread = threading.get_ident()
        try:
            with self._broker_errors():
                self._ensure_open()
                while True:
                    connection = self._connection
                    try:
                        subscribe_and_serve()
                        break
                    except pika.exceptions.AMQPError as exc:
                        if self._stop.is_set():
                            break
                        if not _retryable(exc):
                            raise
                        if self._connection is not connection and self._connection.is_open:
                            continue  # a send from a callback failed over: subscribe there
                        try:
                            self._reconnect(exc, RECONNECT_WINDOW_SECONDS)
                        except BrokerUnreachable:
                            if self._stop.is_set():
                                break
                            raise
        finally:
            self._stop.clear()
            self._consumer_thread = None
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
            flushed_at = self._publisher.flushed_at if self._publisher is not None else 0.0
            if time.monotonic() - max(self._io_at, flushed_at) < IDLE_CHECK_SECONDS:
                return  # busy: a close would have been noticed in the last I/O turn
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._connection.process_data_events(0)  # notice a close that already happened
                self._io_at = time.monotonic()
        if not self._connection.is_open:
            logger.info("reconnecting to the broker")
            self._publisher = None
            self._retired = []
            self._connection = self._connect_any(deadline=None, moving_on=True)

    def _connect_any(
        self, deadline: float | None, moving_on: bool = False
    ) -> pika.BlockingConnection:
        """Connect to the current node, or the ones after it. `moving_on`: the current node
        just failed, start with the next. Without a `deadline`, one round over the nodes;
        with one, rounds (with growing pauses) until it passes. A refused login is final."""
        delay = self._nodes.failed() if moving_on else 0.0
        errors: dict[str, BrokerUnreachable] = {}
        while True:
            if self._nodes.round_failed and errors:
                if deadline is None or time.monotonic() + delay > deadline:
                    raise _unreachable(errors)
                if self._consumer_thread is None:
                    time.sleep(delay)
                elif self._stop.wait(delay):
                    raise BrokerUnreachable("stopped while reconnecting to the broker")
            parameters = self._nodes.current
            try:
                connection = _connect(parameters, self.username)
            except BrokerUnreachable as exc:
                errors[f"{parameters.host}:{parameters.port}"] = exc
                delay = self._nodes.failed()
                continue
            self._nodes.succeeded()
            if errors:
                logger.info("connected to the broker at %s:%d", parameters.host, parameters.port)
            return connection

    def _reconnect(self, lost: BaseException, window: float) -> None:
        """The connection (or a channel of it) failed: connect to the next node, and set up
        the sending channel again if there was one (publishing what is unanswered)."""
        deadline = time.monotonic() + window
        while True:
            current = self._nodes.current
            logger.warning(
                "lost the broker at %s:%d (%s); moving to the next node",
                current.host,
                current.port,
                _text(lost),
            )
            had_publisher = self._publisher is not None or self._sends.outgoing
            self._publisher = None
            self._retired = []  # their channels went with the connection
            old = self._connection
            with contextlib.suppress(Exception):
                if old.is_open:
                    old.close()
            self._connection = self._connect_any(deadline, moving_on=True)
            self._io_at = time.monotonic()
            if not had_publisher:
                return
            try:
                self._ready_publisher()
                return
            except pika.exceptions.AMQPError as exc:
                if not _retryable(exc) or time.monotonic() > deadline:
                    raise
                lost = exc

    @contextlib.contextmanager
    def _failover(self, timeout: float) -> Iterator[None]:
        """Around a sending step: a lost connection moves to the next node, where everything
        unanswered is published again; the step itself is not repeated."""
        try:
            yield
        except pika.exceptions.AMQPError as exc:
            if not _retryable(exc):
                raise
            self._reconnect(exc, max(timeout, RECONNECT_WINDOW_SECONDS))

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
            raise _connection_error(exc, self._nodes.current, self.username) from None
        except pika.exceptions.AMQPError as exc:
            self._publisher = None
            raise BrokerUnreachable(f"lost the connection to the broker ({_text(exc)})") from None


@dataclass
class _Outgoing:
    """One message to the outbox, kept until settled so a failover can publish it again."""

    client_id: str
    body: bytes
    kind: str
    reply_to: str | None
    sent_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    nacks: int = 0
    retry_at: float | None = None  # monotonic time to publish a nacked message again


class _SendState:
    """What was sent and not settled yet, across connections: a send until the relay has
    answered it (or the caller stopped waiting), a receipt until the broker confirmed it."""

    def __init__(self) -> None:
        self.outgoing: dict[str, _Outgoing] = {}  # in publish order
        self.answers: dict[str, RelayAnswer] = {}
        self.confirmed: set[str] = set()
        self.nacked: set[str] = set()

    def new_send(self, to: str, text: str) -> _Outgoing:
        body = json.dumps({"to": to, "text": text}, ensure_ascii=False).encode()
        if len(body) > MAX_BODY_BYTES:
            raise MessageRejected(
                f"the message is too long ({len(body)} bytes; at most {MAX_BODY_BYTES})", "invalid"
            )
        return self._add(_Outgoing(str(uuid.uuid4()), body, TYPE_SEND, REPLY_TO))

    def new_receipt(self, message_id: str, to: str, status: str) -> _Outgoing:
        body = json.dumps({"message_id": message_id, "to": to, "status": status}).encode()
        return self._add(_Outgoing(str(uuid.uuid4()), body, TYPE_RECEIPT, None))

    def _add(self, outgoing: _Outgoing) -> _Outgoing:
        self.outgoing[outgoing.client_id] = outgoing
        return outgoing

    def awaits_answer(self, client_id: str | None) -> bool:
        outgoing = self.outgoing.get(client_id or "")
        return outgoing is not None and outgoing.reply_to is not None

    def on_confirm(self, client_id: str, ack: bool) -> None:
        outgoing = self.outgoing.get(client_id)
        if outgoing is None:
            return
        if outgoing.reply_to is None:  # a receipt: done either way
            del self.outgoing[client_id]
            if not ack:
                logger.warning("the broker refused a receipt")
            return
        (self.confirmed if ack else self.nacked).add(client_id)

    def on_answer(self, client_id: str, answer: RelayAnswer) -> None:
        if self.awaits_answer(client_id):
            self.answers[client_id] = answer

    def take_answers(self, client_ids: Iterable[str]) -> dict[str, RelayAnswer]:
        got = {}
        for client_id in client_ids:
            answer = self.answers.pop(client_id, None)
            if answer is not None:
                got[client_id] = answer
                self.forget(client_id)
        return got

    def forget(self, client_id: str) -> None:
        self.outgoing.pop(client_id, None)
        self.confirmed.discard(client_id)
        self.nacked.discard(client_id)

    def publishing_again(self, again: list[_Outgoing]) -> None:
        """These (nacked) messages are being published again on a new channel."""
        for outgoing in again:
            self.nacked.discard(outgoing.client_id)
            self.confirmed.discard(outgoing.client_id)

    def to_publish_again(self) -> list[_Outgoing]:
        """After a failover: everything unsettled, in order, as if never published."""
        for client_id in self.outgoing:
            self.confirmed.discard(client_id)
            self.nacked.discard(client_id)
        return list(self.outgoing.values())

    def unanswered_error(self, client_id: str, timeout: float, sender: str) -> MessengerError:
        nacked, confirmed = client_id in self.nacked, client_id in self.confirmed
        outgoing = self.outgoing.get(client_id)
        self.forget(client_id)
        if nacked:
            return BrokerRefused("the broker did not accept the message; it was not sent")
        if confirmed:
            return NotConfirmed(
                f"the relay did not answer within {timeout:g} s; the broker holds the message",
                client_id,
                stable_id(sender, client_id, outgoing.sent_ms) if outgoing else None,
            )
        return BrokerUnreachable(
            f"the broker did not confirm the message within {timeout:g} s; "
            "it may not have been sent"
        )


class _Publisher:
    """The sending channel of one connection: async confirms by sequence number, answers
    by client id. On creation it publishes `again`, by default whatever `sends` holds
    unsettled (a new connection: the old one's confirms and answers are gone).

    Publishes go to the asynchronous channel underneath, which only queues the frames; they
    are written (several messages per `send()`) in the next I/O turn, or here every
    FLUSH_EVERY publishes. `BlockingChannel.basic_publish` would flush and poll per call."""

    def __init__(
        self,
        connection: pika.BlockingConnection,
        username: str,
        sends: _SendState,
        again: list[_Outgoing] | None = None,
    ) -> None:
        self._connection = connection
        self._username = username
        self._sends = sends
        self._channel = connection.channel()
        impl: pika.channel.Channel = self._channel._impl
        self._impl = impl
        self._seq = 0
        self._unconfirmed: dict[int, str] = {}
        self._published: list[str] = []  # client ids that await the relay's answer here
        self._queued = 0  # publishes not yet flushed
        self.flushed_at = time.monotonic()
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
        if again is None:
            again = sends.to_publish_again()
            if again:
                logger.info("publishing %d unanswered messages again", len(again))
        else:
            sends.publishing_again(again)
        for outgoing in again:
            self.publish(outgoing)
        self.flush()

    def publish(self, outgoing: _Outgoing) -> None:
        props = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            user_id=self._username,
            message_id=outgoing.client_id,
            reply_to=outgoing.reply_to,
            type=outgoing.kind,
            headers={PROTOCOL_HEADER: PROTOCOL_VERSION, SENT_MS_HEADER: outgoing.sent_ms},
        )
        # Routing key = own name: the consistent-hash outbox keeps a sender on one shard.
        self._impl.basic_publish(OUTBOX_EXCHANGE, self._username, outgoing.body, props)
        self._seq += 1
        self._unconfirmed[self._seq] = outgoing.client_id
        if outgoing.reply_to is not None:
            self._published.append(outgoing.client_id)
        self._queued += 1
        if self._queued >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the queued publishes now (and read what came: confirms, answers)."""
        self._queued = 0
        self._connection.process_data_events(0)
        self.flushed_at = time.monotonic()

    def awaits_anything(self) -> bool:
        """Whether a confirm or an answer may still come on this channel for a message the
        library still tracks."""
        self._published = [c for c in self._published if self._sends.awaits_answer(c)]
        return bool(self._unconfirmed or self._published)

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            if self._channel.is_open:
                self._channel.close()

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            done = [seq for seq in self._unconfirmed if seq <= method.delivery_tag]
        else:
            done = [method.delivery_tag]
        for seq in done:
            client_id = self._unconfirmed.pop(seq, None)
            if client_id is not None:
                self._sends.on_confirm(client_id, ack)

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
        if self._sends.awaits_answer(client_id):
            self._sends.on_answer(client_id, answer)
            self._wake()

    def _wake(self) -> None:
        """End the current `process_data_events()` wait now: this callback runs below
        BlockingConnection's dispatch, so without a ready event it would sleep on."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._connection.call_later(0, self._woken)

    def _woken(self) -> None:
        self._wake_scheduled = False


def _handle_batch(
    channel: BlockingChannel,
    batch: list[tuple[int, pika.spec.BasicProperties, bytes]],
    on_messages: Callable[[list[DeliveredMessage]], None],
    on_receipt: Callable[[ReceiptNotice], None] | None,
) -> int:
    """Decode one I/O turn's deliveries, hand them over in order (runs of messages as one
    list), then ack them all with one frame, queued on the asynchronous channel (written by
    the next I/O turn or the channel's close). If a callback raises, what was handled before
    it is acked and the rest stays unacked."""
    done_tag = 0
    run: list[DeliveredMessage] = []
    run_tag = 0

    def hand_over_run() -> None:
        nonlocal done_tag
        if run:
            on_messages(list(run))
            run.clear()
        done_tag = run_tag

    try:
        for tag, props, body in batch:
            kind = props.type or TYPE_MESSAGE
            try:
                if kind == TYPE_MESSAGE:
                    run.append(DeliveredMessage.model_validate_json(body))
                    run_tag = tag
                    continue
                if kind == TYPE_RECEIPT_NOTICE:
                    notice = ReceiptNotice.model_validate_json(body)
                    hand_over_run()
                    if on_receipt is not None:
                        on_receipt(notice)
                else:
                    logger.warning("skipped an inbox message of unknown type %r", kind)
            except ValidationError:
                logger.warning("skipped an inbox message that could not be read")
            if not run:
                done_tag = tag
            run_tag = tag
        hand_over_run()
    finally:
        if done_tag:
            channel._impl.basic_ack(done_tag, multiple=True)
    return len(batch)


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


def _unreachable(errors: dict[str, BrokerUnreachable]) -> BrokerUnreachable:
    """One node: its own error. Several: what each said, in one line."""
    if len(errors) == 1:
        return next(iter(errors.values()))
    reasons = "; ".join(f"{where}: {_text(exc)}" for where, exc in errors.items())
    return BrokerUnreachable(
        f"cannot reach any broker node ({reasons})", hint="is the server running?"
    )


def _retryable(exc: BaseException) -> bool:
    """A failure that another node (or the same one, later) may not have: a lost or closed
    connection, or a channel error other than a refusal or a missing queue. The broker says
    "down or inaccessible" (404) for a classic queue whose node is down: that one passes."""
    if isinstance(
        exc,
        pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError,
    ):
        return False
    if isinstance(
        exc, pika.exceptions.ChannelClosedByBroker | pika.exceptions.ConnectionClosedByBroker
    ):
        if exc.reply_code in (403, 406, 530):
            return False
        return exc.reply_code != 404 or "down or inaccessible" in str(exc.reply_text)
    return isinstance(exc, pika.exceptions.AMQPError)


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
