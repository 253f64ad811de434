"""The sending channel of one connection: publishes to the outbox, confirms, relay answers.

Each publish to the outbox is confirmed by the broker asynchronously (tracked here by
sequence number) and answered by the relay on the direct reply-to (matched by client id),
so a sender keeps a window of messages in flight instead of paying a round trip each.
pika's blocking adapter has no public asynchronous-confirm API (its confirm mode waits per
publish), so this channel works on the asynchronous channel underneath the blocking one
(broker.pika_io.async_channel): its confirm and reply-to callbacks run during any I/O turn,
which also lets a send work from inside a consume callback, and its publishes only queue
their frames, written several messages per `send()` system call in the next I/O turn (every
FLUSH_EVERY publishes at the latest), where `BlockingChannel.basic_publish` would flush and
poll once per call. This is the only module of the client near pika's internals.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pydantic import ValidationError

from broker.pika_io import async_channel
from clients.library.connection import Connection
from clients.library.errors import BrokerUnreachable
from clients.library.ledger import Outgoing, SendLedger
from protocol import PROTOCOL_VERSION
from protocol.messages import PROTOCOL_HEADER, SENT_MS_HEADER, RelayAnswer
from protocol.topology import CONTENT_TYPE, OUTBOX_EXCHANGE, REPLY_TO

logger = logging.getLogger(__name__)

# Publishes are queued on the channel and written in I/O turns: at least every this many.
FLUSH_EVERY = 64
OPEN_TIMEOUT_SECONDS = 10.0


class Publisher:
    """Opens its channel (confirm mode, reply-to consumer), then publishes `again`, by
    default whatever the ledger holds unsettled (a new connection: the old one's confirms
    and answers are gone)."""

    def __init__(
        self, connection: Connection, ledger: SendLedger, again: list[Outgoing] | None = None
    ) -> None:
        self._connection = connection
        self._ledger = ledger
        self.generation = connection.generation
        self._channel = connection.channel()
        self._async = async_channel(self._channel)
        self._seq = 0
        self._unconfirmed: dict[int, str] = {}
        self._published: list[str] = []  # client ids that await the relay's answer here
        self._queued = 0  # publishes not yet flushed
        self._wake_scheduled = False
        # Set when the broker closes this channel (a refused publish: 403 while the auth
        # service cannot be asked): pika says so only to a blocking call, and we make none.
        self.closed_by_broker: pika.exceptions.ChannelClosedByBroker | None = None
        self._async.add_on_close_callback(self._on_close)
        ready: list[bool] = []
        self._async.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _f: ready.append(True)
        )
        self._async.basic_consume(
            REPLY_TO, self._on_answer, auto_ack=True, callback=lambda _f: ready.append(True)
        )
        deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
        while len(ready) < 2:
            if self.closed_by_broker is not None:
                raise self.closed_by_broker
            if time.monotonic() > deadline:
                raise BrokerUnreachable("the broker did not open a sending channel in time")
            connection.pump(0.1)
        if again is None:
            again = ledger.to_publish_again()
            if again:
                logger.info("publishing %d unanswered messages again", len(again))
        for outgoing in again:
            self.publish(outgoing)
        self.flush()

    def current_on(self, connection: Connection) -> bool:
        """Opened on `connection`'s current pika connection (not on one lost since)."""
        return self.generation == connection.generation

    def publish(self, outgoing: Outgoing) -> None:
        username = self._connection.username
        props = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            user_id=username,
            message_id=outgoing.client_id,
            reply_to=outgoing.reply_to,
            type=outgoing.kind,
            headers={PROTOCOL_HEADER: PROTOCOL_VERSION, SENT_MS_HEADER: outgoing.sent_ms},
        )
        # Routing key = own name: the consistent-hash outbox keeps a sender on one shard.
        self._async.basic_publish(OUTBOX_EXCHANGE, username, outgoing.body, props)
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
        self._connection.pump(0)

    def awaits_anything(self) -> bool:
        """Whether a confirm or an answer may still come on this channel for a message the
        ledger still tracks."""
        self._published = [c for c in self._published if self._ledger.awaits_answer(c)]
        return bool(self._unconfirmed or self._published)

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            if self._channel.is_open:
                self._channel.close()

    def _on_close(self, _channel: Any, reason: Exception) -> None:
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self.closed_by_broker = reason

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            done = [seq for seq in self._unconfirmed if seq <= method.delivery_tag]
        else:
            done = [method.delivery_tag]
        for seq in done:
            client_id = self._unconfirmed.pop(seq, None)
            if client_id is not None and not self._ledger.on_confirm(client_id, ack):
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
        if self._ledger.awaits_answer(client_id):
            self._ledger.on_answer(client_id, answer)
            self._wake()

    def _wake(self) -> None:
        """End the current `pump()` wait now: this callback runs below BlockingConnection's
        dispatch, so without a ready event it would sleep on."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._connection.call_soon(self._woken)

    def _woken(self) -> None:
        self._wake_scheduled = False
