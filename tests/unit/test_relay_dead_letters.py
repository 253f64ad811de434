"""The relay's dead-letter channel (services/relay/dead_letters.py) on a fake channel:
relay.dead confirms -> counted and acked; refuses (nack, or no queue) -> counted as
refused, dropped and acked; not open -> reject without requeue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pika
import pika.frame
import pika.spec

from protocol.topology import DEAD_LETTER_EXCHANGE
from services.relay.dead_letters import REASON_HEADER, SENDER_HEADER, DeadLetterChannel, Poison
from services.relay.status import Counters


@dataclass
class Channel:
    published: list[tuple[str, bytes, pika.BasicProperties]] = field(default_factory=list)
    is_open: bool = True
    on_confirm: Any = None
    on_return: Any = None
    on_close: Any = None

    def add_on_close_callback(self, callback: Any) -> None:
        self.on_close = callback

    def add_on_return_callback(self, callback: Any) -> None:
        self.on_return = callback

    def confirm_delivery(self, ack_nack_callback: Any, callback: Any) -> None:
        self.on_confirm = ack_nack_callback
        callback(None)

    def basic_publish(self, exchange, routing_key, body, properties, mandatory=False):
        self.published.append((exchange, body, properties))


@dataclass
class Connection:
    channel_made: Channel = field(default_factory=Channel)
    is_open: bool = True

    def channel(self, on_open_callback: Any) -> None:
        on_open_callback(self.channel_made)


def rig() -> tuple[DeadLetterChannel, Channel, Counters, list[int], list[int]]:
    connection = Connection()
    counters = Counters()
    acked: list[int] = []
    rejected: list[int] = []
    dead = DeadLetterChannel(
        cast(Any, connection), counters=counters, done=acked.append, fallback=rejected.append
    )
    dead.open()
    return dead, connection.channel_made, counters, acked, rejected


def poison(tag: int) -> Poison:
    return Poison(tag, "body is not JSON", "mallory", "m1", "application/json", b"{")


def confirm(channel: Channel, seq: int, *, ack: bool) -> None:
    method = pika.spec.Basic.Ack if ack else pika.spec.Basic.Nack
    channel.on_confirm(pika.frame.Method(1, method(delivery_tag=seq)))


def test_a_confirmed_dead_letter_is_counted_and_its_outbox_message_acked():
    dead, channel, counters, acked, _ = rig()
    dead.send(poison(7))
    [(exchange, body, props)] = channel.published
    assert exchange == DEAD_LETTER_EXCHANGE and body == b"{"
    assert props.headers[REASON_HEADER] == "body is not JSON"
    assert props.headers[SENDER_HEADER] == "mallory"
    assert acked == []
    confirm(channel, 1, ack=True)
    assert acked == [7] and counters.dead_lettered == 1


def test_a_refused_dead_letter_is_counted_dropped_and_acked_once():
    dead, channel, counters, acked, rejected = rig()
    dead.send(poison(3))
    dead.send(poison(4))
    confirm(channel, 1, ack=False)  # relay.dead is full
    channel.on_return(channel, None, channel.published[1][2], b"")  # no queue bound
    confirm(channel, 2, ack=True)
    assert acked == [3, 4] and rejected == []
    assert (counters.dead_lettered, counters.dead_letter_refused) == (0, 2)


def test_without_an_open_channel_the_poison_is_rejected_for_the_brokers_dead_lettering():
    dead, channel, counters, acked, rejected = rig()
    dead.send(poison(1))
    channel.on_close(channel, Exception("closed"))  # what was in flight falls back too
    dead.send(poison(2))
    assert rejected == [1, 2] and acked == []
    assert counters.dead_lettered == 2
