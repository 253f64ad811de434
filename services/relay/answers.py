"""The relay's answers to senders (accepted / rejected), on a channel of their own.

Answers go to the sender's direct reply-to address, transient and unconfirmed: a lost answer
leaves the client `NotConfirmed`, no more. They have their own channel because RabbitMQ
3.10 closes a channel (541) that publishes to the direct reply-to of a connection on a node
that is down (node_health.py), and that must not take the outbox acks and inbox confirms
of the main channel down with it. While the channel is being reopened, answers are dropped:
their requester is most likely gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pika
import pika.channel
from pika.adapters.select_connection import SelectConnection

from broker.errors import describe
from protocol import PROTOCOL_VERSION
from protocol.messages import PROTOCOL_HEADER, encode
from protocol.topology import CONTENT_TYPE, TYPE_ANSWER
from services.relay.routing import Answer
from services.relay.status import Counters

logger = logging.getLogger(__name__)

_HEADERS = {PROTOCOL_HEADER: PROTOCOL_VERSION}


def _never(_reply_to: str) -> bool:
    return False


def _nothing(_channel: pika.channel.Channel) -> None:
    return None


class AnswerChannel:
    """Opens (and reopens, while `reopen()` says so) the answer channel of one connection.

    `skip(reply_to)` drops an answer before it is published; `on_open(channel)` runs on
    each new channel. Both serve node_health.py; without it they are left out."""

    def __init__(
        self,
        connection: SelectConnection,
        *,
        counters: Counters,
        reopen: Callable[[], bool],
        skip: Callable[[str], bool] = _never,
        on_open: Callable[[pika.channel.Channel], None] = _nothing,
    ) -> None:
        self._connection = connection
        self._counters = counters
        self._reopen = reopen
        self._skip = skip
        self._on_open = on_open
        self._channel: pika.channel.Channel | None = None
        self._opening = False

    def open(self) -> None:
        if self._opening or not self._connection.is_open:
            return
        self._opening = True
        self._connection.channel(on_open_callback=self.use)

    def use(self, channel: pika.channel.Channel) -> None:
        """Answer on `channel` from now on (called when the channel opens)."""
        self._opening = False
        self._channel = channel
        channel.add_on_close_callback(self._closed)
        self._on_open(channel)

    def send(self, answer: Answer) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            logger.debug("answer channel not open: dropped the answer to %s", answer.reply_to)
            self.open()
            return
        if self._skip(answer.reply_to):
            self._counters.answers_dropped += 1
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

    def _closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        if self._channel is channel:
            self._channel = None
        if self._reopen():
            logger.info("the answer channel closed (%s); reopening it", describe(reason))
            self.open()
