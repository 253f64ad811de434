"""Poison to relay.dead, published by the relay itself on a channel of its own, confirmed.

Why not `basic.reject(requeue=False)` and the outbox shards' dead-letter exchange: a broker
that dead-letters into a full relay.dead (its length limit, `overflow: reject-publish`)
drops the message without telling anybody, and the reason the relay refused it would live
only in its log. Published here, each dead letter carries its reason and sender in
headers, the broker confirms it, and a refusal (relay.dead full, or missing) is counted
(`dead_letter_refused`) and logged, and the poison is dropped: acked, never delivered again.
The outbox message is acked once relay.dead has it (or refused it), so a relay that dies in
between only leaves it for the next relay, which dead-letters it again.

While this channel is not open (the first moments of a connection, or after the broker
closed it), the worker falls back to reject-without-requeue: the shards' dead-letter
exchange still takes the poison to relay.dead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.channel
import pika.frame
import pika.spec
from pika.adapters.select_connection import SelectConnection

from broker.errors import describe
from protocol.topology import DEAD_LETTER_EXCHANGE
from services.relay.status import Counters

logger = logging.getLogger(__name__)

REASON_HEADER = "x-messenger-dead-reason"
SENDER_HEADER = "x-messenger-sender"
MESSAGE_ID_HEADER = "x-messenger-message-id"
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Poison:
    """An outbox message the relay will not relay, and why."""

    outbox_tag: int
    reason: str
    sender: str | None
    message_id: str | None
    content_type: str | None
    body: bytes


class DeadLetterChannel:
    """Publishes poison to relay.dead and settles its outbox message through `done(tag)`
    (ack it) once relay.dead confirmed or refused it; `fallback(tag)` (reject it without
    requeue) when this channel cannot take it."""

    def __init__(
        self,
        connection: SelectConnection,
        *,
        counters: Counters,
        done: Callable[[int], None],
        fallback: Callable[[int], None],
    ) -> None:
        self._connection = connection
        self._counters = counters
        self._done = done
        self._fallback = fallback
        self._channel: pika.channel.Channel | None = None
        self._ready = False
        self._seq = 0
        self._pending: dict[int, Poison] = {}  # confirm sequence number -> poison
        self._returned: set[int] = set()

    def open(self) -> None:
        if self._connection.is_open:
            self._connection.channel(on_open_callback=self._on_open)

    def _on_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirming)

    def _on_confirming(self, _frame: pika.frame.Method) -> None:
        self._ready = True

    def send(self, poison: Poison) -> None:
        channel = self._channel
        if not self._ready or channel is None or not channel.is_open:
            self._counters.dead_lettered += 1
            logger.warning(
                "dead-lettered an outbox message from %s through the broker: %s",
                poison.sender or "nobody",
                poison.reason,
            )
            self._fallback(poison.outbox_tag)
            return
        self._seq += 1
        headers: dict[str, object] = {
            REASON_HEADER: poison.reason[:MAX_REASON_CHARS],
            SENDER_HEADER: poison.sender or "",
        }
        if poison.message_id is not None:
            headers[MESSAGE_ID_HEADER] = poison.message_id
        channel.basic_publish(
            DEAD_LETTER_EXCHANGE,
            "",
            poison.body,
            pika.BasicProperties(
                content_type=poison.content_type,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=f"dead-{self._seq}",
                headers=headers,
            ),
            mandatory=True,
        )
        self._pending[self._seq] = poison

    def _on_return(
        self,
        _channel: pika.channel.Channel,
        _method: pika.spec.Basic.Return,
        props: pika.spec.BasicProperties,
        _body: bytes,
    ) -> None:
        message_id = props.message_id
        if isinstance(message_id, str) and message_id.startswith("dead-"):
            self._returned.add(int(message_id.removeprefix("dead-")))

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            seqs = [seq for seq in self._pending if seq <= method.delivery_tag]
        else:
            seqs = [method.delivery_tag] if method.delivery_tag in self._pending else []
        for seq in seqs:
            poison = self._pending.pop(seq)
            returned = seq in self._returned
            self._returned.discard(seq)
            if ack and not returned:
                self._counters.dead_lettered += 1
                logger.warning(
                    "dead-lettered an outbox message from %s: %s (%d dead-lettered so far)",
                    poison.sender or "nobody",
                    poison.reason,
                    self._counters.dead_lettered,
                )
            else:
                self._counters.dead_letter_refused += 1
                logger.error(
                    "relay.dead refused a dead letter from %s (%s): dropped it (%s; %d "
                    "refused so far)",
                    poison.sender or "nobody",
                    "no queue bound" if returned else "full",
                    poison.reason,
                    self._counters.dead_letter_refused,
                )
            self._done(poison.outbox_tag)

    def _on_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        """The broker closed the channel (or the connection went): poison not yet confirmed
        stays unacked in the outbox; if the connection lives on, the worker's channel is
        intact and those messages wait for it to close too, so reject them now."""
        self._ready = False
        if self._channel is channel:
            self._channel = None
        pending, self._pending = self._pending, {}
        self._returned.clear()
        if self._connection.is_open:
            logger.warning("the dead-letter channel closed (%s)", describe(reason))
            for poison in pending.values():
                self.send(poison)  # falls back to reject-without-requeue
