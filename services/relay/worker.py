"""One channel's work: consume the outbox shards, route, publish to inboxes, answer, ack.

Why pika's asynchronous `SelectConnection` and not `BlockingConnection`: a blocking channel
in confirm mode waits for each publish's confirm before the next one, so one relay would
move one message per broker fsync round trip. Here every inbox publish is tracked by its
confirm sequence number (confirms.py); thousands are outstanding at once (bounded by the
prefetch of the shard consumers) and each outbox message is acked the moment its own inbox
publish is confirmed, returned or nacked, and its sender answered. Per-sender order holds
because a shard's messages are published in the order they were consumed, and the broker
keeps that order into the inbox queue.

Decisions live in routing.py (and rate_limits.py); this module decodes, calls them,
publishes and acks. A refused publish goes to inbox_checks.py, answers to answers.py,
poison to dead_letters.py; lifecycle.py opens the connection and the channel, makes one
`OutboxWorker` per channel and stops it.

Nothing a sender publishes may raise out of `on_message`: an exception there leaves pika's
I/O loop, the relay dies, the message comes back, and the relay dies again (issue 9).
`decode()` turns whatever pika hands over (bytes where text belongs, properties pika could
not decode at all: broker/pika_io.guard_property_decoding) into an `Incoming` with its
`problem` named, and `route()` never raises.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from datetime import datetime

import pika
import pika.channel
import pika.frame
import pika.spec
from pika.adapters.select_connection import SelectConnection

from broker.pika_io import undecodable
from protocol import PROTOCOL_VERSION
from protocol.messages import PROTOCOL_HEADER, SENT_MS_HEADER
from protocol.topology import (
    ARCHIVE_EXCHANGE,
    CONTENT_TYPE,
    OUTBOX_QUEUES,
    TYPE_RECEIPT,
    TYPE_RECEIPT_NOTICE,
)
from services.relay.answers import AnswerChannel
from services.relay.confirms import ConfirmTracker, Pending
from services.relay.dead_letters import DeadLetterChannel, Poison
from services.relay.ids import IdGenerator
from services.relay.inbox_checks import RefusedPublishes
from services.relay.rate_limits import Limit, RateLimits
from services.relay.routing import (
    DeadLetter,
    Deliver,
    Incoming,
    Outcome,
    Reply,
    Verdict,
    answer_for,
    refuse,
    route,
)
from services.relay.settings import RelaySettings
from services.relay.status import Counters

logger = logging.getLogger(__name__)

_HEADERS = {PROTOCOL_HEADER: PROTOCOL_VERSION}


_TEXT_PROPERTIES = ("user_id", "content_type", "type", "message_id", "reply_to")


class _Over(enum.Enum):
    """A sender past its rate limit: answered `rate_limited`, or (a flood, past its first
    refusals) acked without a word."""

    ANSWERED = "answered"
    SILENTLY = "silently"


def decode(props: pika.spec.BasicProperties, body: bytes) -> Incoming:
    """The parts of an outbox delivery that routing looks at. Never raises: a property
    that is not text (pika hands over invalid UTF-8 as bytes), or properties pika could not
    decode, make the `problem` that dead-letters the message."""
    problem = undecodable(props)
    if problem is not None:
        problem = f"properties pika cannot decode ({problem})"
    text: dict[str, str | None] = {}
    for name in _TEXT_PROPERTIES:
        value = getattr(props, name, None)
        if value is not None and not isinstance(value, str):
            problem = problem or f"the {name} property is not UTF-8 text"
            value = None
        text[name] = value
    headers = props.headers if isinstance(props.headers, dict) else None
    return Incoming(
        body=body if isinstance(body, bytes) else bytes(body),
        user_id=text["user_id"],
        content_type=text["content_type"],
        type=text["type"],
        message_id=text["message_id"],
        reply_to=text["reply_to"],
        client_ms=_header_int(headers, SENT_MS_HEADER),
        problem=problem,
    )


class OutboxWorker:
    """The work of one channel, from `start()` (consume every shard) to `shutdown()`.

    `on_message`, `on_return` and `on_confirm` are the channel's callbacks. `on_consuming()`
    runs once every shard's consumer is confirmed; `on_finished()` once a shutdown has
    nothing left to wait for (or its grace period ran out).
    """

    def __init__(
        self,
        connection: SelectConnection,
        channel: pika.channel.Channel,
        *,
        settings: RelaySettings,
        answers: AnswerChannel,
        counters: Counters,
        clock: Callable[[], datetime],
        ids: IdGenerator,
        limits: RateLimits,
        on_consuming: Callable[[], None] = lambda: None,
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._settings = settings
        self._answers = answers
        self._counters = counters
        self._clock = clock
        self._ids = ids
        self._limits = limits
        self._on_consuming = on_consuming
        self._on_finished = on_finished
        self._confirms = ConfirmTracker()
        self._refused = RefusedPublishes(
            connection,
            republish=self._deliver,
            settle=self._settle,
            usable=lambda: self._channel.is_open,
            retry_max_delay=settings.retry_max_delay_seconds,
            counters=counters,
        )
        self._dead = DeadLetterChannel(
            connection, counters=counters, done=self._ack, fallback=self._reject
        )
        self._open_tags: set[int] = set()  # delivered, not yet acked or rejected
        self._acks_due: list[int] = []  # rate-limited: acked together after this I/O turn
        self._consumer_tags: set[str] = set()
        self._consuming = 0
        self._shutting_down = False

    @property
    def in_flight(self) -> int:
        """Outbox messages not settled yet: awaiting their confirm, or held."""
        return len(self._confirms) + len(self._refused)

    @property
    def message_ids(self) -> frozenset[str]:
        """The server ids of the inbox publishes awaiting their confirm."""
        return self._confirms.message_ids

    def start(self) -> None:
        self._dead.open()
        channel = self._channel
        channel.add_on_return_callback(self.on_return)
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.confirm_delivery(ack_nack_callback=self.on_confirm, callback=self._on_confirm_mode)

    # -- the work --------------------------------------------------------------------------

    def on_message(
        self,
        _channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        self._open_tags.add(tag)
        over = self._over_limit(props)
        if over is _Over.SILENTLY:  # the cheapest path there is: one flood message
            self._count_limited(props.user_id)
            self._ack_soon(tag)
            return
        incoming = decode(props, body)
        try:
            if over is _Over.ANSWERED:
                detail = self._limits.describe(Limit.SENDER)
                outcome: Outcome = refuse(incoming, "rate_limited", detail)
            else:
                outcome = route(incoming, now=self._clock(), new_id=self._ids.next_id())
            if isinstance(outcome, Deliver) and not self._pair_allowed(incoming, outcome):
                detail = self._limits.describe(Limit.RECIPIENT, outcome.recipient)
                outcome = refuse(incoming, "rate_limited", detail)
        except Exception as exc:  # route() never raises; this is the last line of defence
            logger.error("cannot handle an outbox message: %s: %s", type(exc).__name__, exc)
            outcome = DeadLetter(f"the relay failed on it ({type(exc).__name__})")
        if isinstance(outcome, Deliver):
            self._deliver(Pending(outcome, tag))
        elif isinstance(outcome, Reply):
            self._reply(incoming, outcome, tag)
        else:
            self._dead.send(
                Poison(
                    outbox_tag=tag,
                    reason=outcome.reason,
                    sender=incoming.user_id,
                    message_id=incoming.message_id,
                    content_type=incoming.content_type,
                    body=incoming.body,
                )
            )

    def _over_limit(self, props: pika.spec.BasicProperties) -> _Over | None:
        """The sender's bucket (rate_limits.py), before anything is decoded: a flood message
        costs a look-up and its share of one ack; the first refusals are answered. Only a
        sender the broker checked (`user_id` as text) is limited."""
        sender = props.user_id
        if not isinstance(sender, str) or not sender:
            return None
        receipt = props.type == TYPE_RECEIPT
        if self._limits.allow_sender(sender, receipt=receipt):
            return None
        if receipt or not self._limits.answer_refusal(sender):
            return _Over.SILENTLY
        return _Over.ANSWERED

    def _pair_allowed(self, incoming: Incoming, deliver: Deliver) -> bool:
        """The (sender, recipient) bucket, for messages (a receipt has its own above)."""
        if deliver.type == TYPE_RECEIPT_NOTICE or incoming.user_id is None:
            return True
        return self._limits.allow_pair(incoming.user_id, deliver.recipient)

    def _reply(self, incoming: Incoming, outcome: Reply, tag: int) -> None:
        """Nothing to relay: answer (if the sender can be answered) and ack."""
        answer = outcome.answer
        limited = outcome.rate_limited
        if limited:
            self._count_limited(incoming.user_id)
        else:
            self._counters.invalid += 1
            logger.info(
                "rejected an invalid message from %s: %s",
                incoming.user_id,
                answer.body.detail if answer else "(no reply-to)",
            )
        if answer is not None:
            self._answers.send(answer)
        if limited:
            self._ack_soon(tag)
        else:
            self._ack(tag)

    def _count_limited(self, sender: str | None) -> None:
        self._counters.rate_limited += 1
        if self._counters.rate_limited % 1000 == 1:  # one line per burst, not per message
            logger.warning(
                "rate-limited %s (%d rate-limited so far)", sender, self._counters.rate_limited
            )

    def _ack(self, tag: int) -> None:
        self._open_tags.discard(tag)
        if self._channel.is_open:
            self._channel.basic_ack(tag)

    def _ack_soon(self, tag: int) -> None:
        """A flood's messages are acked together, once per I/O turn: one `multiple` ack when
        nothing older is still open (the usual case for a flooder alone on its shard)."""
        self._acks_due.append(tag)
        if len(self._acks_due) == 1:
            self._connection.ioloop.call_later(0, self._flush_acks)

    def _flush_acks(self) -> None:
        tags, self._acks_due = self._acks_due, []
        if not tags or not self._channel.is_open:
            return
        self._open_tags.difference_update(tags)
        highest = max(tags)
        if not self._open_tags or min(self._open_tags) > highest:
            self._channel.basic_ack(highest, multiple=True)
        else:
            for tag in tags:
                self._channel.basic_ack(tag)

    def _reject(self, tag: int) -> None:
        """Reject without requeue: the shard's dead-letter exchange takes it to relay.dead."""
        self._open_tags.discard(tag)
        if self._channel.is_open:
            self._channel.basic_reject(tag, requeue=False)

    def on_return(
        self,
        _channel: pika.channel.Channel,
        _method: pika.spec.Basic.Return,
        props: pika.spec.BasicProperties,
        _body: bytes,
    ) -> None:
        self._confirms.returned(props.message_id)

    def on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        for pending, verdict in self._confirms.settle(
            method.delivery_tag, multiple=method.multiple, ack=ack
        ):
            if pending.parent is not None:
                self._copy_settled(pending, verdict)
            elif verdict is Verdict.CONFIRMED:
                self._settle(pending, verdict)
            else:
                self._refused.refused(pending, verdict)
        if self._shutting_down:
            self._maybe_finished()

    def _deliver(self, pending: Pending) -> None:
        """Publish to the recipient's inbox (mandatory, persistent); `on_confirm` settles."""
        deliver = pending.deliver
        self._channel.basic_publish(
            deliver.exchange,
            deliver.recipient,
            deliver.body,
            pika.BasicProperties(
                content_type=CONTENT_TYPE,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=deliver.message_id,
                type=deliver.type,
                timestamp=int(deliver.sent_at.timestamp()),
                headers={**_HEADERS, **dict(deliver.headers)} if deliver.headers else _HEADERS,
            ),
            mandatory=True,
        )
        self._confirms.track(pending)

    # -- copies: carbons to the sender's devices, the archive (routing.Copy) ------------------

    def _publish_copies(self, pending: Pending) -> None:
        """The main publish is confirmed: publish its copies; the outbox message is settled
        once every copy is confirmed too (`_copy_settled`)."""
        pending.copied = True
        pending.copies_left = len(pending.deliver.copies)
        for copy in pending.deliver.copies:
            deliver = dataclasses.replace(
                pending.deliver,
                exchange=copy.exchange,
                recipient=copy.routing_key,
                headers=copy.headers,
                copies=(),
            )
            self._deliver(Pending(deliver, pending.outbox_tag, parent=pending))

    def _copy_settled(self, copy: Pending, verdict: Verdict) -> None:
        """A copy's verdict. An archive copy the broker nacked is published again a second
        later (the archive must get every accepted message; the outbox message stays unacked
        meanwhile). A carbon that nobody took (the sender has no device queue) is fine: its
        devices catch up from the archive."""
        parent = copy.parent
        assert parent is not None
        to_archive = copy.deliver.exchange == ARCHIVE_EXCHANGE
        if to_archive and verdict is Verdict.NACKED:
            logger.warning(
                "the archive copy of %s was nacked; again in 1 s", copy.deliver.message_id
            )
            self._connection.ioloop.call_later(1.0, lambda: self._retry_copy(copy))
            return
        if to_archive and verdict is Verdict.RETURNED:
            logger.error(
                "no queue is bound to the %r exchange: message %s is not archived",
                ARCHIVE_EXCHANGE,
                copy.deliver.message_id,
            )
        parent.copies_left -= 1
        if parent.copies_left == 0:
            self._settle(parent, Verdict.CONFIRMED)

    def _retry_copy(self, copy: Pending) -> None:
        if self._channel.is_open:  # else the outbox message comes back with the channel
            copy.attempts += 1
            self._deliver(copy)

    def _settle(self, pending: Pending, verdict: Verdict) -> None:
        """The broker's final word on the publish: count it, answer the sender, ack."""
        if verdict is Verdict.CONFIRMED and pending.deliver.copies and not pending.copied:
            self._publish_copies(pending)
            return
        deliver = pending.deliver
        if verdict is Verdict.CONFIRMED:
            if deliver.type == TYPE_RECEIPT_NOTICE:  # not "no reply-to": anyone can omit it
                self._counters.receipts += 1
            else:
                self._counters.relayed += 1
        elif verdict is Verdict.RETURNED:
            self._counters.unknown_recipient += 1
            logger.info(
                "no inbox for %r: message %s not delivered", deliver.recipient, deliver.message_id
            )
        else:
            self._counters.inbox_full += 1
            logger.warning(
                "inbox of %r is full: message %s refused", deliver.recipient, deliver.message_id
            )
        answer = answer_for(deliver, verdict)
        if answer is not None:
            self._answers.send(answer)
        self._ack(pending.outbox_tag)

    # -- consuming -------------------------------------------------------------------------

    def _on_confirm_mode(self, _frame: pika.frame.Method) -> None:
        self._channel.basic_qos(prefetch_count=self._settings.prefetch, callback=self._on_qos)

    def _on_qos(self, _frame: pika.frame.Method) -> None:
        if self._shutting_down:
            return
        for queue in OUTBOX_QUEUES:
            tag = self._channel.basic_consume(queue, self.on_message, callback=self._on_consume_ok)
            self._consumer_tags.add(tag)

    def _on_consume_ok(self, _frame: pika.frame.Method) -> None:
        self._consuming += 1
        if self._consuming == len(OUTBOX_QUEUES):
            logger.info(
                "consuming %s (prefetch %d each)", ", ".join(OUTBOX_QUEUES), self._settings.prefetch
            )
            self._on_consuming()

    def _on_cancelled(self, frame: pika.frame.Method) -> None:
        logger.error("the broker cancelled a consumer (%s); reconnecting", frame.method)
        if self._channel.is_open:
            self._channel.close()

    # -- stopping --------------------------------------------------------------------------

    def shutdown(self) -> None:
        """No new messages; finish what is in flight, then `on_finished()`. Held messages
        are not retried: they stay unacked and go back to the outbox with the channel."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self._flush_acks()
        self._refused.stop_retrying()
        logger.info(
            "stopping: no new messages; finishing %d in flight (%d held for unavailable "
            "inboxes go back to the outbox)",
            len(self._confirms),
            len(self._refused),
        )
        for tag in list(self._consumer_tags):
            self._channel.basic_cancel(tag, callback=self._on_cancel_ok)
        self._connection.ioloop.call_later(self._settings.shutdown_grace_seconds, self._on_finished)
        self._maybe_finished()

    def _on_cancel_ok(self, frame: pika.frame.Method) -> None:
        self._consumer_tags.discard(frame.method.consumer_tag)
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        if not self._consumer_tags and not self._confirms:
            self._on_finished()


def _header_int(headers: dict[str, object] | None, name: str) -> int | None:
    """An integer header; also its decimal text, which is all a STOMP client (the browser,
    through Web STOMP) can send: the broker turns every STOMP header into a string."""
    value = headers.get(name) if headers else None
    if isinstance(value, bytes):  # a byte array, or a string pika found not to be UTF-8
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
