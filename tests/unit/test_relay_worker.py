"""The worker's plumbing against a fake channel: ack only after the broker's verdict."""

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pika
import pika.frame
import pika.spec
from pydantic import SecretStr

from protocol.messages import SENT_MS_HEADER
from protocol.topology import INBOX_EXCHANGE, TYPE_ANSWER, TYPE_MESSAGE, TYPE_SEND
from services.relay.settings import RelaySettings
from services.relay.worker import Backoff, RelayWorker

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REPLY = "amq.rabbitmq.reply-to.abc"


@dataclass
class FakeChannel:
    published: list[dict[str, Any]] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    rejected: list[tuple[int, bool]] = field(default_factory=list)
    is_open: bool = True

    def basic_publish(self, exchange, routing_key, body, properties, mandatory=False):
        self.published.append(
            {
                "exchange": exchange,
                "routing_key": routing_key,
                "body": json.loads(body),  # round-trip: what goes out must be JSON
                "props": properties,
                "mandatory": mandatory,
            }
        )

    def basic_ack(self, delivery_tag, multiple=False):
        self.acked.append(delivery_tag)

    def basic_reject(self, delivery_tag, requeue=True):
        self.rejected.append((delivery_tag, requeue))


def make_worker() -> tuple[RelayWorker, FakeChannel]:
    worker = RelayWorker(RelaySettings(amqp_password=SecretStr("x")), clock=lambda: NOW)
    channel = FakeChannel()
    worker._channel = channel
    return worker, channel


def deliver(
    worker: RelayWorker, channel: FakeChannel, tag: int, body: object, **props: Any
) -> None:
    properties = {
        "content_type": "application/json",
        "user_id": "alice",
        "message_id": f"client-{tag}",
        "reply_to": REPLY,
        "type": TYPE_SEND,
        "headers": {SENT_MS_HEADER: int(time.time() * 1000)},
    }
    properties.update(props)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    worker._on_message(
        channel,
        pika.spec.Basic.Deliver(delivery_tag=tag),
        pika.BasicProperties(**properties),
        raw,
    )


def confirm(worker: RelayWorker, seq: int, *, ack: bool = True, multiple: bool = False) -> None:
    method = pika.spec.Basic.Ack if ack else pika.spec.Basic.Nack
    worker._on_confirm(pika.frame.Method(1, method(delivery_tag=seq, multiple=multiple)))


def answers(channel: FakeChannel) -> list[dict[str, Any]]:
    return [p["body"] for p in channel.published if p["props"].type == TYPE_ANSWER]


def test_outbox_message_is_acked_only_after_the_inbox_publish_is_confirmed():
    worker, channel = make_worker()
    deliver(worker, channel, 7, {"to": "bob", "text": "hi"})
    [inbox] = channel.published
    assert (inbox["exchange"], inbox["routing_key"], inbox["mandatory"]) == (
        INBOX_EXCHANGE,
        "bob",
        True,
    )
    assert inbox["props"].delivery_mode == pika.DeliveryMode.Persistent.value
    assert inbox["props"].type == TYPE_MESSAGE
    assert inbox["body"]["from"] == "alice"
    assert channel.acked == []

    confirm(worker, 1)
    assert channel.acked == [7]
    [answer] = answers(channel)
    assert answer["status"] == "accepted"
    assert answer["id"] == inbox["body"]["id"]
    assert channel.published[-1]["routing_key"] == REPLY


def test_many_publishes_are_outstanding_and_a_multiple_confirm_settles_them_in_order():
    worker, channel = make_worker()
    for tag in range(1, 101):
        deliver(worker, channel, tag, {"to": "bob", "text": f"m{tag}"})
    assert len(channel.published) == 100
    assert channel.acked == []
    confirm(worker, 60, multiple=True)
    assert channel.acked == list(range(1, 61))
    # The 60 answers took sequence numbers 101..160 on the same channel.
    confirm(worker, 100, multiple=True)
    assert channel.acked == list(range(1, 101))
    assert worker.stats.relayed == 100


def test_a_returned_message_is_answered_unknown_recipient_and_acked():
    worker, channel = make_worker()
    deliver(worker, channel, 3, {"to": "nobody", "text": "hi"})
    [inbox] = channel.published
    worker._on_return(
        channel,
        pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE"),
        inbox["props"],
        b"",
    )
    confirm(worker, 1)
    assert channel.acked == [3]
    assert answers(channel)[0]["reason"] == "unknown_recipient"


def test_a_nack_means_the_inbox_is_full():
    worker, channel = make_worker()
    deliver(worker, channel, 4, {"to": "bob", "text": "hi"})
    confirm(worker, 1, ack=False)
    assert channel.acked == [4]
    assert answers(channel)[0]["reason"] == "inbox_full"
    assert worker.stats.inbox_full == 1


def test_unreadable_input_is_rejected_without_requeue_and_the_next_one_served():
    worker, channel = make_worker()
    deliver(worker, channel, 1, b"{oops")
    deliver(worker, channel, 2, {"to": "bob", "text": "x"}, user_id=None)
    deliver(worker, channel, 3, {"to": "bob", "text": "x"}, content_type="text/plain")
    deliver(worker, channel, 4, {"to": "bob", "text": "fine"})
    assert channel.rejected == [(1, False), (2, False), (3, False)]
    assert worker.stats.dead_lettered == 3
    confirm(worker, 1)
    assert channel.acked == [4]


def test_an_invalid_message_is_answered_and_acked_at_once():
    worker, channel = make_worker()
    deliver(worker, channel, 5, {"to": "bob", "text": "  "})
    assert channel.acked == [5]
    assert answers(channel)[0]["detail"] == "text: text must not be empty"


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(maximum=3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_a_reused_client_id_still_gets_each_return_right():
    """Two in-flight publishes with one server id: returns pair up in publish order."""
    worker, channel = make_worker()
    headers = {SENT_MS_HEADER: 1_700_000_000_000}
    deliver(worker, channel, 1, {"to": "nobody", "text": "a"}, message_id="same", headers=headers)
    deliver(worker, channel, 2, {"to": "nobody", "text": "a"}, message_id="same", headers=headers)
    first, second = channel.published
    assert first["props"].message_id == second["props"].message_id
    for published in (first, second):
        worker._on_return(channel, pika.spec.Basic.Return(reply_code=312), published["props"], b"")
    confirm(worker, 2, multiple=True)
    assert [a["reason"] for a in answers(channel)] == ["unknown_recipient"] * 2
    assert worker._by_message_id == {}
