"""The relay's pika plumbing: consume the outbox shards, publish to inboxes, answer, ack.

Why pika's asynchronous `SelectConnection` and not `BlockingConnection`: a blocking channel
in confirm mode waits for each publish's confirm before the next one, so one relay would
move one message per broker fsync round trip. Here every inbox publish is tracked by its
confirm sequence number; thousands are outstanding at once (bounded by the prefetch of the
four shard consumers) and each outbox message is acked the moment its own inbox publish is
confirmed, returned or nacked, and its sender answered. One thread, one connection, one
channel: per-sender order holds because a shard's messages are published in the order they
were consumed, and the broker keeps that order into the inbox queue.

On a cluster the relay is given every node (MESSENGER_RELAY_AMQP_NODES) and uses one at a
time: when its connection fails or is lost it connects to the next node at once, and waits
(capped backoff) only after every node has failed in a row. What was in flight on the lost
connection is redelivered by the broker; the server id is stable (routing.py), so a message
relayed twice reaches its recipient twice with one id, and is shown once. Answers to senders
whose connection was on a node that is down are dropped, not published: RabbitMQ 3.10 closes
the publishing connection (541) for each of them (see "answers to senders on a node that is
down" below).

A refused inbox publish (returned or nacked) is checked before the sender is told anything:
a passive declare of the inbox, on a short-lived channel of its own (a 404 closes the
channel it runs on), tells "no such user" from "its node is down". A message for an inbox
that exists but is unavailable stays unacked in the outbox and is published again after a
growing delay (routing.judge_refusal says which is which). Holding it keeps the promise
that nothing confirmed is lost, and delivers it the moment the inbox is back; the sender,
who gets no answer meanwhile, hears NotConfirmed ("queued, will be delivered"). The cost:
held messages occupy the shard's prefetch window, so if more than `prefetch` of one shard's
messages wait for a dead node's classic inboxes, that shard stalls until the node returns.
Quorum inboxes never get there (they stay available while a majority of nodes runs).

Decisions live in routing.py; this module only decodes, calls them, publishes and acks.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.select_connection import SelectConnection

from protocol import PROTOCOL_VERSION
from protocol.messages import PROTOCOL_HEADER, SENT_MS_HEADER, encode
from protocol.nodes import Backoff, NodeRotation
from protocol.pika_io import coalesce_pika_writes, describe_pika_error
from protocol.topology import (
    CONTENT_TYPE,
    INBOX_EXCHANGE,
    OUTBOX_QUEUES,
    TYPE_ANSWER,
    inbox_queue,
)
from services.relay.ids import IdGenerator
from services.relay.routing import (
    Answer,
    DeadLetter,
    Deliver,
    InboxCheck,
    InboxState,
    Incoming,
    Reply,
    Verdict,
    answer_for,
    check_from_close,
    check_from_declare_ok,
    judge_refusal,
    retry_delay,
    route,
)
from services.relay.settings import RelaySettings

logger = logging.getLogger(__name__)

# An auth refusal is not retried forever: a wrong password does not fix itself. A few tries
# cover a broker that accepts connections a moment before its definitions are loaded.
MAX_AUTH_REFUSALS = 5
# Reconnect attempts logged as warnings before they become errors.
ESCALATE_AFTER_ATTEMPTS = 10
STATS_INTERVAL_SECONDS = 30.0
# A passive declare that gets no answer in this time counts as "inbox unavailable".
PROBE_TIMEOUT_SECONDS = 5.0
_HEADERS = {PROTOCOL_HEADER: PROTOCOL_VERSION}
# Direct reply-to: the pseudo-queue a client consumes, and the prefix of the address the
# broker writes into `reply_to` (it names the consuming channel's process and its node).
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
_REPLY_TO_PREFIX = DIRECT_REPLY_TO + "."
# A routing key no queue has: the broker returns the mandatory publish that learns a node's
# reply-to name (`_learn_node_name`).
_NOWHERE = "messenger.relay.no-such-queue"
# How often the nodes that are down are checked (a TCP connect) for their return.
NODE_CHECK_INTERVAL_SECONDS = 1.0
# How long to wait before asking an unreachable node its reply-to name again.
NAME_RETRY_SECONDS = 5.0

__all__ = ["Backoff", "RelayWorker", "Stats"]


@dataclass
class Stats:
    relayed: int = 0
    receipts: int = 0
    unknown_recipient: int = 0
    inbox_full: int = 0
    held: int = 0  # refused while the inbox was unavailable: kept and published again
    answers_dropped: int = 0  # for a sender whose connection was on a node that is down
    invalid: int = 0
    dead_lettered: int = 0

    def line(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in vars(self).items())


class _Pending:
    """An inbox publish awaiting the broker's confirm, and the outbox message it came from."""

    __slots__ = ("attempts", "deliver", "outbox_tag", "returned")

    def __init__(self, deliver: Deliver, outbox_tag: int, attempts: int = 1) -> None:
        self.deliver = deliver
        self.outbox_tag = outbox_tag
        self.attempts = attempts
        self.returned = False


class RelayWorker:
    """Runs until `request_stop()`; moves to the next node when the broker goes."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ids: IdGenerator | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._ids = ids or IdGenerator()
        self._nodes = NodeRotation(
            settings.broker_nodes(), max_delay=settings.reconnect_max_delay_seconds
        )
        self.stats = Stats()
        self._stop_requested = threading.Event()
        self._auth_refusals = 0
        self._failed = False
        self._failure = ""
        self._connection: SelectConnection | None = None
        # node -> the node name its direct reply-to addresses carry (learned on connecting);
        # the names of nodes whose connection was lost, until a TCP connect reaches them again.
        self._node_names: dict[tuple[str, int], str] = {}
        self._down_names: frozenset[str] = frozenset()
        self._names_lock = threading.Lock()
        self._node_checker: threading.Thread | None = None
        self._check_nodes = False  # the last connection was lost, or closed with 541
        self._reset_channel_state()
        coalesce_pika_writes()

    # -- public ----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped. 0 after a clean stop, 1 when the broker keeps refusing us."""
        attempt = 0
        if len(self._settings.broker_nodes()) > 1:
            threading.Thread(
                target=self._fetch_node_names, name="relay-node-names", daemon=True
            ).start()
        while not self._stop_requested.is_set():
            attempt += 1
            self._failure = "the broker closed the connection"
            self._connection = SelectConnection(
                parameters=self._parameters(),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
            )
            self._connection.ioloop.start()
            self._connection.ioloop.close()
            self._connection = None
            if self._failed:
                return 1
            if self._stop_requested.is_set():
                break
            if self._check_nodes:
                self._check_nodes = False
                self._mark_unreachable_nodes()
            delay = self._nodes.failed()
            level = (
                logging.ERROR if self._nodes.failures > ESCALATE_AFTER_ATTEMPTS else logging.WARNING
            )
            logger.log(level, "%s; reconnecting to the broker in %.1f s (%s, attempt %d)",
                       self._failure, delay, self._where(), attempt + 1)  # fmt: skip
            self._sleep(delay)
        logger.info("relay stopped (%s)", self.stats.line())
        return 0

    def request_stop(self) -> None:
        """Thread- and signal-safe: stop consuming, finish what is in flight, close."""
        self._stop_requested.set()
        connection = self._connection
        if connection is not None:
            connection.ioloop.add_callback_threadsafe(self._begin_shutdown)

    # -- connection and channel ------------------------------------------------------------

    def _where(self) -> str:
        host, port = self._nodes.current
        return f"{host}:{port}"

    def _parameters(self) -> pika.ConnectionParameters:
        s = self._settings
        host, port = self._nodes.current
        return pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=s.vhost,
            credentials=pika.PlainCredentials(s.amqp_user, s.amqp_password.get_secret_value()),
            heartbeat=30,
            connection_attempts=1,
            socket_timeout=5,
            client_properties={"connection_name": f"messenger-relay pid {os.getpid()}"},
        )

    def _reset_channel_state(self) -> None:
        self._channel: pika.channel.Channel | None = None
        # Answers go out on a channel of their own: RabbitMQ 3.10 closes a channel (541)
        # that publishes to the direct reply-to of a connection on a node that is down, and
        # that must not take the outbox acks and inbox confirms down with it.
        self._answer_channel: pika.channel.Channel | None = None
        self._answer_channel_opening = False
        self._publish_seq = 0
        self._pending: dict[int, _Pending] = {}
        # server id -> sequence numbers in flight (one, unless a client reused its id)
        self._by_message_id: dict[str, list[int]] = {}
        self._consumer_tags: set[str] = set()
        self._consuming = 0
        self._shutting_down = False
        # Refused publishes waiting for their inbox check or for their retry.
        self._held: set[_Pending] = set()
        # recipient -> what to do with the result of the check in progress for that inbox
        self._probes: dict[str, list[Callable[[InboxCheck], None]]] = {}

    def _on_connection_open(self, connection: pika.connection.Connection) -> None:
        logger.info("connected to the broker at %s", self._where())
        self._auth_refusals = 0
        self._node_is_up(self._nodes.current)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(
        self, connection: pika.connection.Connection, error: BaseException | str
    ) -> None:
        where = self._where()
        if isinstance(
            error,
            pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError,
        ):
            self._auth_refusals += 1
            self._failure = (
                f"the broker at {where} refused the relay's login ({self._auth_refusals} of "
                f"{MAX_AUTH_REFUSALS}): check MESSENGER_RELAY_AMQP_USER/PASSWORD and the vhost"
            )
            if self._auth_refusals >= MAX_AUTH_REFUSALS:
                logger.error("%s; giving up", self._failure)
                self._failed = True
        else:
            self._failure = f"cannot reach the broker at {where} ({_reason(error)})"
            self._node_is_down(self._nodes.current)
        self._stop_ioloop()

    def _on_connection_closed(
        self, connection: pika.connection.Connection, reason: BaseException
    ) -> None:
        in_flight = len(self._pending) + len(self._held)
        self._reset_channel_state()
        # The node went (a TCP connect may still succeed for a few ms while a killed node's
        # sockets are being closed: the lost connection is what counts), or another node
        # crashed our channel, perhaps with an answer for a node that went: find out which
        # nodes are down before connecting again.
        lost = isinstance(reason, pika.exceptions.StreamLostError)
        if lost:
            self._node_is_down(self._nodes.current)
        self._check_nodes = lost or getattr(reason, "reply_code", None) == pika.spec.INTERNAL_ERROR
        if self._stop_requested.is_set():
            logger.info("connection closed")
        else:
            self._failure = (
                f"lost the broker connection ({_reason(reason)}; the broker redelivers the "
                f"{in_flight} messages that were in flight)"
            )
        self._stop_ioloop()

    def _stop_ioloop(self) -> None:
        if self._connection is not None:
            self._connection.ioloop.stop()

    def _open_answer_channel(self) -> None:
        connection = self._connection
        if self._answer_channel_opening or connection is None or not connection.is_open:
            return
        self._answer_channel_opening = True

        def on_open(channel: pika.channel.Channel) -> None:
            self._answer_channel_opening = False
            self._answer_channel = channel
            channel.add_on_close_callback(on_closed)
            self._learn_node_name(channel)

        def on_closed(channel: pika.channel.Channel, reason: BaseException) -> None:
            if self._answer_channel is channel:
                self._answer_channel = None
            if not self._shutting_down and not self._stop_requested.is_set():
                logger.info("the answer channel closed (%s); reopening it", _reason(reason))
                self._open_answer_channel()

        connection.channel(on_open_callback=on_open)

    # -- answers to senders on a node that is down ----------------------------------------
    #
    # RabbitMQ 3.10 crashes the channel that publishes to the direct reply-to address of a
    # node that has left the cluster (rabbit_channel:deliver_reply gets a bare `error` from
    # rabbit_direct_reply_to:decode_reply_to_v2 and has no clause for it), and a channel
    # crash closes the whole connection with 541 INTERNAL_ERROR: every unacked outbox
    # message is redelivered, and every answer in flight is lost. After a node dies, the
    # outbox still holds messages its clients sent, so each relay connection would be torn
    # down again and again until they were all gone. Those senders are gone too (they
    # publish everything unanswered again from their new node), so their answers are
    # dropped instead: the node named in the address is checked against the nodes that are
    # down. A node's name is learned from the broker (`_learn_node_name`, and once per node
    # from a thread); a node counts as down when the relay's connection to it is lost or
    # refused, or when it refuses a TCP connect tried right after the relay's connection was
    # lost or closed with 541; it is up again when a TCP connect (tried every second) or the
    # relay's own connection reaches it.

    def _learn_node_name(self, channel: pika.channel.Channel) -> None:
        """Learn the name the current node writes into direct reply-to addresses: a
        mandatory publish that no queue takes, with `reply_to` set, comes back rewritten."""
        node = self._nodes.current

        def on_return(
            _channel: pika.channel.Channel,
            _method: pika.spec.Basic.Return,
            props: pika.spec.BasicProperties,
            _body: bytes,
        ) -> None:
            self._node_named(node, reply_to_node(props.reply_to))

        def on_consume_ok(_frame: pika.frame.Method) -> None:
            if channel.is_open:
                channel.basic_publish(
                    "", _NOWHERE, b"", pika.BasicProperties(reply_to=DIRECT_REPLY_TO),
                    mandatory=True,
                )  # fmt: skip

        channel.add_on_return_callback(on_return)
        channel.basic_consume(
            DIRECT_REPLY_TO, lambda *_: None, auto_ack=True, callback=on_consume_ok
        )

    def _node_named(self, node: tuple[str, int], name: str | None) -> None:
        if name is not None and self._node_names.get(node) != name:
            logger.debug("the node at %s:%d answers as %s", *node, name)
            self._node_names[node] = name

    def _fetch_node_names(self) -> None:
        """Thread: learn the reply-to name of every node, each on a short connection of its
        own, so that a node the relay never used can be recognised when it dies."""
        while not self._stop_requested.is_set():
            missing = [n for n in self._settings.broker_nodes() if n not in self._node_names]
            for node in missing:
                try:
                    self._node_named(node, self._ask_node_name(node))
                except (pika.exceptions.AMQPError, OSError) as exc:
                    logger.debug("could not learn the name of %s:%d: %s", *node, _reason(exc))
            if all(n in self._node_names for n in self._settings.broker_nodes()):
                return
            self._stop_requested.wait(NAME_RETRY_SECONDS)

    def _ask_node_name(self, node: tuple[str, int]) -> str | None:
        s = self._settings
        params = pika.ConnectionParameters(
            host=node[0],
            port=node[1],
            virtual_host=s.vhost,
            credentials=pika.PlainCredentials(s.amqp_user, s.amqp_password.get_secret_value()),
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=5,
            client_properties={"connection_name": f"messenger-relay pid {os.getpid()} (probe)"},
        )
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_consume(DIRECT_REPLY_TO, lambda *_: None, auto_ack=True)
            try:
                channel.basic_publish(
                    "", _NOWHERE, b"", pika.BasicProperties(reply_to=DIRECT_REPLY_TO),
                    mandatory=True,
                )  # fmt: skip
            except pika.exceptions.UnroutableError as returned:
                for message in returned.messages:
                    return reply_to_node(message.properties.reply_to)
            return None
        finally:
            if connection.is_open:
                connection.close()

    def _node_is_down(self, node: tuple[str, int]) -> None:
        name = self._node_names.get(node)
        if name is None or name in self._down_names:
            return
        logger.warning(
            "the node at %s:%d (%s) is down: answers to its clients are dropped until it is "
            "back", *node, name,
        )  # fmt: skip
        with self._names_lock:
            self._down_names = self._down_names | {name}
        if self._node_checker is None or not self._node_checker.is_alive():
            self._node_checker = threading.Thread(
                target=self._check_down_nodes, name="relay-node-check", daemon=True
            )
            self._node_checker.start()

    def _node_is_up(self, node: tuple[str, int]) -> None:
        name = self._node_names.get(node)
        if name is not None and name in self._down_names:
            logger.info("the node at %s:%d (%s) is back", *node, name)
            with self._names_lock:
                self._down_names = self._down_names - {name}

    def _mark_unreachable_nodes(self) -> None:
        """Mark every node that refuses a TCP connect (or does not take it within a second)
        as down: called when the connection was lost or crashed, before connecting again."""
        for node, name in list(self._node_names.items()):
            if name not in self._down_names and not _reachable(node):
                self._node_is_down(node)

    def _check_down_nodes(self) -> None:
        """Thread: until no node is down, try a TCP connect to each down node every second.
        (`_down_names` is replaced, never changed in place: the ioloop reads it unlocked.)"""
        while self._down_names and not self._stop_requested.wait(NODE_CHECK_INTERVAL_SECONDS):
            for node, name in list(self._node_names.items()):
                if name in self._down_names and _reachable(node):
                    self._node_is_up(node)

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self._open_answer_channel()
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_consumer_cancelled)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: pika.frame.Method) -> None:
        assert self._channel is not None
        self._channel.basic_qos(prefetch_count=self._settings.prefetch, callback=self._on_qos)

    def _on_qos(self, _frame: pika.frame.Method) -> None:
        assert self._channel is not None
        if self._stop_requested.is_set():
            self._begin_shutdown()
            return
        for queue in OUTBOX_QUEUES:
            tag = self._channel.basic_consume(queue, self._on_message, callback=self._on_consume_ok)
            self._consumer_tags.add(tag)

    def _on_consume_ok(self, frame: pika.frame.Method) -> None:
        self._consuming += 1
        if self._consuming == len(OUTBOX_QUEUES):
            logger.info(
                "consuming %s (prefetch %d each)", ", ".join(OUTBOX_QUEUES), self._settings.prefetch
            )
            self._nodes.succeeded()
            if self._connection is not None:
                self._connection.ioloop.call_later(STATS_INTERVAL_SECONDS, self._log_stats)

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        if not self._stop_requested.is_set():
            logger.error("the broker closed the relay's channel: %s; reconnecting", _reason(reason))
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()

    def _on_consumer_cancelled(self, frame: pika.frame.Method) -> None:
        logger.error("the broker cancelled a consumer (%s); reconnecting", frame.method)
        if self._channel is not None and self._channel.is_open:
            self._channel.close()

    # -- the work --------------------------------------------------------------------------

    def _on_message(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        incoming = Incoming(
            body=body,
            user_id=props.user_id,
            content_type=props.content_type,
            type=props.type,
            message_id=props.message_id,
            reply_to=props.reply_to,
            client_ms=_header_int(props.headers, SENT_MS_HEADER),
        )
        outcome = route(incoming, now=self._clock(), new_id=self._ids.next_id())
        tag = method.delivery_tag
        if isinstance(outcome, Deliver):
            self._deliver(_Pending(outcome, tag))
        elif isinstance(outcome, Reply):
            self.stats.invalid += 1
            logger.info(
                "rejected an invalid message from %s: %s",
                props.user_id,
                outcome.answer.body.detail if outcome.answer else "(no reply-to)",
            )
            if outcome.answer is not None:
                self._answer(outcome.answer)
            channel.basic_ack(tag)
        elif isinstance(outcome, DeadLetter):
            self.stats.dead_lettered += 1
            logger.warning(
                "dead-lettered an outbox message from %s: %s (%d dead-lettered so far)",
                props.user_id or "nobody",
                outcome.reason,
                self.stats.dead_lettered,
            )
            channel.basic_reject(tag, requeue=False)

    def _deliver(self, pending: _Pending) -> None:
        """Publish to the recipient's inbox; `_on_confirm` settles it."""
        deliver = pending.deliver
        seq = self._publish(
            INBOX_EXCHANGE,
            deliver.recipient,
            deliver.body,
            pika.BasicProperties(
                content_type=CONTENT_TYPE,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=deliver.message_id,
                type=deliver.type,
                timestamp=int(deliver.sent_at.timestamp()),
                headers=_HEADERS,
            ),
            mandatory=True,
        )
        pending.returned = False
        self._pending[seq] = pending
        self._by_message_id.setdefault(deliver.message_id, []).append(seq)

    def _on_return(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        # The broker returns an unroutable mandatory message just before it confirms it,
        # in publish order.
        for seq in self._by_message_id.get(props.message_id or "", ()):
            if not self._pending[seq].returned:
                self._pending[seq].returned = True
                break

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        base = Verdict.CONFIRMED if isinstance(method, pika.spec.Basic.Ack) else Verdict.NACKED
        last = method.delivery_tag
        if method.multiple:
            done = []
            for seq in self._pending:  # insertion order is sequence order
                if seq > last:
                    break
                done.append(seq)
        else:
            done = [last] if last in self._pending else []
        for seq in done:
            pending = self._pending.pop(seq)
            self._forget(pending.deliver.message_id, seq)
            verdict = Verdict.RETURNED if pending.returned else base
            if verdict is Verdict.CONFIRMED:
                self._settle(pending, verdict)
            else:
                self._check_inbox(pending, verdict)
        if self._shutting_down:
            self._maybe_finish_shutdown()

    def _forget(self, message_id: str, seq: int) -> None:
        seqs = self._by_message_id.get(message_id)
        if seqs is not None:
            seqs.remove(seq)
            if not seqs:
                del self._by_message_id[message_id]

    # -- refused publishes: check the inbox, then answer or hold and retry -----------------

    def _check_inbox(self, pending: _Pending, verdict: Verdict) -> None:
        self._held.add(pending)

        def judged(check: InboxCheck) -> None:
            if pending not in self._held or not self._channel_usable():
                return  # the connection went: the broker redelivers the outbox message
            outcome = judge_refusal(verdict, check)
            if outcome is Verdict.UNAVAILABLE:
                self._hold(pending, check)
            else:
                self._held.discard(pending)
                self._settle(pending, outcome)

        self._probe(pending.deliver.recipient, judged)

    def _hold(self, pending: _Pending, check: InboxCheck) -> None:
        self.stats.held += 1
        delay = retry_delay(pending.attempts, self._settings.retry_max_delay_seconds)
        level = logging.WARNING if pending.attempts == 1 else logging.DEBUG
        logger.log(
            level,
            "the inbox of %r is %s: holding message %s, retrying in %.1f s (attempt %d)",
            pending.deliver.recipient,
            "not taking messages" if check.state is InboxState.PRESENT else "unavailable",
            pending.deliver.message_id,
            delay,
            pending.attempts + 1,
        )
        assert self._connection is not None
        self._connection.ioloop.call_later(delay, lambda: self._retry(pending))

    def _retry(self, pending: _Pending) -> None:
        if pending not in self._held or not self._channel_usable() or self._shutting_down:
            return
        self._held.discard(pending)
        pending.attempts += 1
        self._deliver(pending)

    def _probe(self, recipient: str, done: Callable[[InboxCheck], None]) -> None:
        """Passive-declare `inbox.<recipient>` on a channel of its own, then call `done`
        (within PROBE_TIMEOUT_SECONDS). Checks of one inbox that overlap share one declare."""
        waiting = self._probes.get(recipient)
        if waiting is not None:
            waiting.append(done)
            return
        waiters = self._probes[recipient] = [done]
        connection = self._connection
        assert connection is not None

        def finish(check: InboxCheck) -> None:
            if self._probes.get(recipient) is waiters:  # the first result wins, once
                del self._probes[recipient]
                for callback in waiters:
                    callback(check)

        def on_open(channel: pika.channel.Channel) -> None:
            def on_ok(frame: pika.frame.Method) -> None:
                finish(check_from_declare_ok(frame.method.message_count))
                if channel.is_open:
                    channel.close()

            def on_closed(_channel: pika.channel.Channel, reason: BaseException) -> None:
                code = getattr(reason, "reply_code", None)
                finish(check_from_close(code, str(getattr(reason, "reply_text", reason))))

            channel.add_on_close_callback(on_closed)
            channel.queue_declare(inbox_queue(recipient), passive=True, callback=on_ok)

        connection.channel(on_open_callback=on_open)
        connection.ioloop.call_later(
            PROBE_TIMEOUT_SECONDS, lambda: finish(InboxCheck(InboxState.UNAVAILABLE))
        )

    def _channel_usable(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def _settle(self, pending: _Pending, verdict: Verdict) -> None:
        deliver = pending.deliver
        if verdict is Verdict.CONFIRMED:
            if deliver.reply_to is None and deliver.client_id is None:
                self.stats.receipts += 1
            else:
                self.stats.relayed += 1
        elif verdict is Verdict.RETURNED:
            self.stats.unknown_recipient += 1
            logger.info(
                "no inbox for %r: message %s not delivered", deliver.recipient, deliver.message_id
            )
        else:
            self.stats.inbox_full += 1
            logger.warning(
                "inbox of %r is full: message %s refused", deliver.recipient, deliver.message_id
            )
        answer = answer_for(deliver, verdict)
        if answer is not None:
            self._answer(answer)
        assert self._channel is not None
        self._channel.basic_ack(pending.outbox_tag)

    def _answer(self, answer: Answer) -> None:
        """Transient and unconfirmed: a lost answer leaves the client `NotConfirmed`, no more.
        (Also while the answer channel is being reopened: its requester is most likely gone.)"""
        channel = self._answer_channel
        if channel is None or not channel.is_open:
            logger.debug("answer channel not open: dropped the answer to %s", answer.reply_to)
            self._open_answer_channel()
            return
        if reply_to_node(answer.reply_to) in self._down_names:
            self.stats.answers_dropped += 1
            logger.debug("the node of %s is down: dropped the answer", answer.reply_to)
            return
        channel.basic_publish(
            "",
            answer.reply_to,
            encode(answer.body),
            pika.BasicProperties(
                content_type=CONTENT_TYPE,
                delivery_mode=pika.DeliveryMode.Transient,
                correlation_id=answer.body.client_id,
                type=TYPE_ANSWER,
                headers=_HEADERS,
            ),
            mandatory=False,
        )

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        props: pika.BasicProperties,
        *,
        mandatory: bool,
    ) -> int:
        assert self._channel is not None
        self._channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)
        self._publish_seq += 1
        return self._publish_seq

    # -- stopping --------------------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        connection = self._connection
        if connection is None or self._shutting_down:
            return
        self._shutting_down = True
        if not connection.is_open or self._channel is None or not self._channel.is_open:
            if connection.is_open:
                connection.close()
            else:
                self._stop_ioloop()
            return
        logger.info(
            "stopping: no new messages; finishing %d in flight (%d held for unavailable "
            "inboxes go back to the outbox)",
            len(self._pending),
            len(self._held),
        )
        for tag in list(self._consumer_tags):
            self._channel.basic_cancel(tag, callback=self._on_cancel_ok)
        connection.ioloop.call_later(self._settings.shutdown_grace_seconds, self._close)

    def _on_cancel_ok(self, frame: pika.frame.Method) -> None:
        self._consumer_tags.discard(frame.method.consumer_tag)
        self._maybe_finish_shutdown()

    def _maybe_finish_shutdown(self) -> None:
        if not self._consumer_tags and not self._pending:
            self._close()

    def _close(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            if self._pending or self._held:
                logger.warning(
                    "closing with %d unconfirmed messages; the broker will redeliver them",
                    len(self._pending) + len(self._held),
                )
            connection.close()

    def _log_stats(self) -> None:
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        logger.info("relay totals: %s", self.stats.line())
        connection.ioloop.call_later(STATS_INTERVAL_SECONDS, self._log_stats)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested.is_set() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _header_int(headers: dict[str, object] | None, name: str) -> int | None:
    value = headers.get(name) if headers else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reachable(node: tuple[str, int]) -> bool:
    try:
        socket.create_connection(node, timeout=NODE_CHECK_INTERVAL_SECONDS).close()
    except OSError:
        return False
    return True


def reply_to_node(reply_to: str | None) -> str | None:
    """The node named in a direct reply-to address, None for any other address.

    The address is `amq.rabbitmq.reply-to.<base64 pid>.<key>`; the pid is in Erlang's
    external term format, its node an atom: the real node name (RabbitMQ before 3.10), or a
    stand-in `reply@<hash of the node name>` (3.10+). Either is stable for a node.
    """
    if not reply_to or not reply_to.startswith(_REPLY_TO_PREFIX):
        return None
    encoded = reply_to[len(_REPLY_TO_PREFIX) :].split(".", 1)[0]
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    # 131 (version), 88 NEW_PID_EXT or 103 PID_EXT, then the node atom
    if len(raw) < 4 or raw[0] != 131 or raw[1] not in (88, 103):
        return None
    tag = raw[2]
    if tag in (118, 100):  # ATOM_UTF8_EXT, ATOM_EXT: 2-byte length
        length, start = int.from_bytes(raw[3:5], "big"), 5
    elif tag in (119, 115):  # SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT: 1-byte length
        length, start = raw[3], 4
    else:
        return None
    name = raw[start : start + length]
    if len(name) != length or not name:
        return None
    return name.decode("utf-8", errors="replace")


_reason = describe_pika_error
