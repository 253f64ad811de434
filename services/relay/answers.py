"""The relay's answers to senders (accepted / rejected), on a channel of their own.

Answers go to the sender's direct reply-to address, transient and unconfirmed: a lost answer
leaves the client `NotConfirmed`, no more. They have their own channel because RabbitMQ
3.10 closes a channel (541) that publishes to the direct reply-to of a connection on a node
that is down (node_health.py), and that must not take the outbox acks and inbox confirms
of the main channel down with it. While the channel is being reopened, answers are dropped:
their requester is most likely gone.

An answer is published only to an address node_health.py can prove deliverable (a node the
relay learned from the broker, and up): a forged address (any user may write one into
`reply_to`) would otherwise make the broker close the relay's connection. Answers that
come before the relay knows its own node's name wait for it (at most MAX_WAITING of them,
for at most NAME_WAIT_SECONDS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pika
import pika.channel
from pika.adapters.select_connection import SelectConnection

from broker.errors import describe
from protocol import PROTOCOL_VERSION
from protocol.messages import PROTOCOL_HEADER, encode
from protocol.topology import CONTENT_TYPE, TYPE_ANSWER
from services.relay.node_health import Answerability
from services.relay.routing import Answer
from services.relay.status import Counters

logger = logging.getLogger(__name__)

_HEADERS = {PROTOCOL_HEADER: PROTOCOL_VERSION}
MAX_WAITING = 10_000
NAME_WAIT_SECONDS = 10.0


def _always(_reply_to: str) -> Answerability:
    return Answerability.YES


def _nothing(_channel: pika.channel.Channel) -> None:
    return None


class AnswerChannel:
    """Opens (and reopens, while `reopen()` says so) the answer channel of one connection.

    `check(reply_to)` says whether an answer may be published (node_health.py's
    `answerability`); `on_open(channel)` runs on each new channel, and `flush()` once the
    check can tell (the relay learned its node's name). Without node_health.py every
    address is answered."""

    def __init__(
        self,
        connection: SelectConnection,
        *,
        counters: Counters,
        reopen: Callable[[], bool],
        check: Callable[[str], Answerability] = _always,
        on_open: Callable[[pika.channel.Channel], None] = _nothing,
    ) -> None:
        self._connection = connection
        self._counters = counters
        self._reopen = reopen
        self._check = check
        self._waiting: list[Answer] = []
        self._waiting_since = 0.0
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
        verdict = self._check(answer.reply_to)
        if verdict is Answerability.NOT_YET:
            self._wait(answer)
            return
        if verdict is Answerability.NODE_DOWN:
            self._counters.answers_dropped += 1
            logger.debug("the node of %s is down: dropped the answer", answer.reply_to)
            return
        if verdict is Answerability.UNPROVEN:
            self._counters.answers_unproven += 1
            if self._counters.answers_unproven % 1000 == 1:  # one line per burst
                logger.warning(
                    "not answering %r: it names no node the relay knows (%d such so far)",
                    answer.reply_to[:120],
                    self._counters.answers_unproven,
                )
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

    def flush(self) -> None:
        """The check can tell now: send what waited."""
        waiting, self._waiting = self._waiting, []
        for answer in waiting:
            self.send(answer)

    def _wait(self, answer: Answer) -> None:
        if not self._waiting:
            self._waiting_since = time.monotonic()
            self._connection.ioloop.call_later(NAME_WAIT_SECONDS, self._give_up_waiting)
        if len(self._waiting) >= MAX_WAITING:
            self._counters.answers_dropped += 1
            return
        self._waiting.append(answer)

    def _give_up_waiting(self) -> None:
        if self._waiting and time.monotonic() - self._waiting_since >= NAME_WAIT_SECONDS:
            logger.warning(
                "the broker did not tell its node's name in %.0f s: dropped %d answers",
                NAME_WAIT_SECONDS,
                len(self._waiting),
            )
            self._counters.answers_dropped += len(self._waiting)
            self._waiting = []

    def _closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        if self._channel is channel:
            self._channel = None
        if self._reopen():
            logger.info("the answer channel closed (%s); reopening it", describe(reason))
            self.open()
