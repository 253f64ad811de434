"""The worker's plumbing against a fake channel: ack only after the broker's verdict."""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.select_connection import SelectConnection
from pydantic import SecretStr

from protocol.messages import SENT_MS_HEADER
from protocol.topology import (
    INBOX_EXCHANGE,
    TYPE_ANSWER,
    TYPE_MESSAGE,
    TYPE_RECEIPT,
    TYPE_SEND,
    inbox_queue,
    user_anchor_queue,
)
from services.relay.answers import AnswerChannel
from services.relay.ids import IdGenerator
from services.relay.inbox_checks import PROBE_TIMEOUT_SECONDS
from services.relay.node_health import Answerability, NodeHealth
from services.relay.rate_limits import Rate, RateLimits
from services.relay.settings import RelaySettings
from services.relay.status import Counters
from services.relay.worker import OutboxWorker

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

    def add_on_close_callback(self, callback):
        pass


DOWN = "NOT_FOUND - home node 'rabbit@b' of durable queue 'inbox.x' in vhost 'messenger' is down or inaccessible"  # noqa: E501
MISSING = "NOT_FOUND - no queue 'inbox.x' in vhost 'messenger'"


@dataclass
class FakeProbeChannel:
    """A channel for passive declares: `inboxes` maps a queue to its message count, or to
    the 404 text the broker closes the channel with; absent: no answer at all."""

    inboxes: dict[str, int | str]
    declared: list[str]
    is_open: bool = True
    on_close: Callable[..., None] | None = None

    def add_on_close_callback(self, callback: Callable[..., None]) -> None:
        self.on_close = callback

    def queue_declare(self, queue: str, passive: bool, callback: Callable[..., None]) -> None:
        assert passive
        self.declared.append(queue)
        state = self.inboxes.get(queue)
        if isinstance(state, int):
            callback(pika.frame.Method(2, pika.spec.Queue.DeclareOk(queue, state, 0)))
        elif isinstance(state, str):
            self._closed(pika.exceptions.ChannelClosedByBroker(404, state))

    def close(self) -> None:
        self._closed(pika.exceptions.ChannelClosedByClient(200, "Normal shutdown"))

    def _closed(self, reason: BaseException) -> None:
        self.is_open = False
        assert self.on_close is not None
        self.on_close(self, reason)


@dataclass
class FakeConnection:
    """Opens probe channels at once; `call_later` timers run when the test says."""

    inboxes: dict[str, int | str] = field(default_factory=dict)
    declared: list[str] = field(default_factory=list)
    timers: list[tuple[float, Callable[[], None]]] = field(default_factory=list)
    is_open: bool = True

    @property
    def ioloop(self) -> "FakeConnection":
        return self

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((delay, callback))

    def run_timers(self, *, up_to: float) -> list[float]:
        due = [t for t in self.timers if t[0] <= up_to]
        self.timers = [t for t in self.timers if t[0] > up_to]
        for _, callback in due:
            callback()
        return [delay for delay, _ in due]

    def channel(self, on_open_callback: Callable[[FakeProbeChannel], None]) -> None:
        on_open_callback(FakeProbeChannel(self.inboxes, self.declared))


SETTINGS = RelaySettings(amqp_password=SecretStr("x"))


@dataclass
class Rig:
    """An OutboxWorker on a fake channel (which also takes the answers) and connection."""

    worker: OutboxWorker
    channel: FakeChannel
    connection: FakeConnection
    counters: Counters

    def deliver(self, tag: int, body: object, **props: Any) -> None:
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
        self.worker.on_message(
            cast(Any, self.channel),
            pika.spec.Basic.Deliver(delivery_tag=tag),
            pika.BasicProperties(**properties),
            raw,
        )

    def confirm(self, seq: int, *, ack: bool = True, multiple: bool = False) -> None:
        """The broker's verdict on publish `seq`; then acks for the copies (carbon, archive)
        that a confirmed message's publish brings (tests/unit/test_relay_copies.py checks
        those), so sequence numbers here count the main publishes."""
        method = pika.spec.Basic.Ack if ack else pika.spec.Basic.Nack
        self.worker.on_confirm(pika.frame.Method(1, method(delivery_tag=seq, multiple=multiple)))
        self.confirm_copies()

    def confirm_copies(self) -> None:
        tracker = self.worker._confirms
        copies = [seq for seq, pending in tracker._pending.items() if pending.parent is not None]
        for seq in copies:
            ack = pika.spec.Basic.Ack(delivery_tag=seq)
            self.worker.on_confirm(pika.frame.Method(1, ack))
        # the copies' sequence numbers are not the test's: keep the next main publish's seq
        tracker._seq -= len(copies)

    def returned(self, published: dict[str, Any]) -> None:
        self.worker.on_return(
            cast(Any, self.channel),
            pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE"),
            published["props"],
            b"",
        )


UNLIMITED = Rate(0, 1)


def make_worker(
    check: Callable[[str], Answerability] = lambda _r: Answerability.YES,
    limits: RateLimits | None = None,
    **inboxes: int | str,
) -> Rig:
    """`inboxes`: recipient -> message count, or the 404 text of its passive declare."""
    # a return probes the user's anchor, a nack the (legacy, length-limited) inbox
    states = {user_anchor_queue(name): state for name, state in inboxes.items()}
    states |= {inbox_queue(name): state for name, state in inboxes.items()}
    connection = FakeConnection(states)
    channel = FakeChannel()
    counters = Counters()
    loop = cast(SelectConnection, connection)
    answers = AnswerChannel(loop, counters=counters, reopen=lambda: False, check=check)
    answers.use(cast(Any, channel))
    worker = OutboxWorker(
        loop,
        cast(Any, channel),
        settings=SETTINGS,
        answers=answers,
        counters=counters,
        clock=lambda: NOW,
        ids=IdGenerator(),
        limits=limits
        or RateLimits(
            sender=UNLIMITED, recipient=UNLIMITED, receipts=UNLIMITED, clock=time.monotonic
        ),
    )
    return Rig(worker, channel, connection, counters)


def answers(channel: FakeChannel) -> list[dict[str, Any]]:
    return [p["body"] for p in channel.published if p["props"].type == TYPE_ANSWER]


def test_outbox_message_is_acked_only_after_the_inbox_publish_is_confirmed():
    rig = make_worker()
    rig.deliver(7, {"to": "bob", "text": "hi"})
    [inbox] = rig.channel.published
    assert (inbox["exchange"], inbox["routing_key"], inbox["mandatory"]) == (
        INBOX_EXCHANGE,
        "bob",
        True,
    )
    assert inbox["props"].delivery_mode == pika.DeliveryMode.Persistent.value
    assert inbox["props"].type == TYPE_MESSAGE
    assert inbox["body"]["from"] == "alice"
    assert rig.channel.acked == []

    rig.confirm(1)
    assert rig.channel.acked == [7]
    [answer] = answers(rig.channel)
    assert answer["status"] == "accepted"
    assert answer["id"] == inbox["body"]["id"]
    assert rig.channel.published[-1]["routing_key"] == REPLY


def test_many_publishes_are_outstanding_and_a_multiple_confirm_settles_them_in_order():
    rig = make_worker()
    for tag in range(1, 101):
        rig.deliver(tag, {"to": "bob", "text": f"m{tag}"})
    assert len(rig.channel.published) == 100
    assert rig.channel.acked == []
    rig.confirm(60, multiple=True)
    assert rig.channel.acked == list(range(1, 61))
    # The answers go out on the answer channel: they take no sequence numbers.
    rig.confirm(100, multiple=True)
    assert rig.channel.acked == list(range(1, 101))
    assert rig.counters.relayed == 100


def test_a_returned_message_for_a_missing_inbox_is_answered_unknown_recipient_and_acked():
    rig = make_worker(nobody=MISSING)
    rig.deliver(3, {"to": "nobody", "text": "hi"})
    [inbox] = rig.channel.published
    rig.returned(inbox)
    rig.confirm(1)
    assert rig.channel.acked == [3]
    assert answers(rig.channel)[0]["reason"] == "unknown_recipient"


def test_a_nack_from_an_inbox_holding_messages_means_it_is_full():
    rig = make_worker(bob=2)
    rig.deliver(4, {"to": "bob", "text": "hi"})
    rig.confirm(1, ack=False)
    assert rig.channel.acked == [4]
    assert answers(rig.channel)[0]["reason"] == "inbox_full"
    assert rig.counters.inbox_full == 1


def test_a_message_returned_while_the_inbox_node_is_down_is_held_and_published_again():
    rig = make_worker(carol=DOWN)
    rig.deliver(5, {"to": "carol", "text": "are you there?"})
    [first] = rig.channel.published
    rig.returned(first)
    rig.confirm(1)
    assert rig.channel.acked == [] and answers(rig.channel) == []  # not unknown_recipient: kept
    assert rig.counters.held == 1 and rig.counters.unknown_recipient == 0

    assert rig.connection.run_timers(up_to=0.5) == [0.5]  # the first retry
    again = rig.channel.published[-1]
    assert again["routing_key"] == "carol" and again["mandatory"]
    assert again["props"].message_id == first["props"].message_id  # same server id
    rig.confirm(2)
    assert rig.channel.acked == [5]
    assert [a["status"] for a in answers(rig.channel)] == ["accepted"]


def test_a_nack_from_an_empty_or_unreachable_inbox_is_retried_with_growing_delays():
    rig = make_worker(bob=0)
    rig.deliver(6, {"to": "bob", "text": "hi"})
    connection = rig.connection
    rig.confirm(1, ack=False)  # no leader: a quorum inbox reports 0 messages
    assert connection.run_timers(up_to=0.5) == [0.5]
    connection.inboxes[inbox_queue("bob")] = DOWN
    rig.confirm(2, ack=False)
    assert connection.run_timers(up_to=1.0) == [1.0]
    del connection.inboxes[inbox_queue("bob")]  # the declare gets no answer: times out
    rig.confirm(3, ack=False)
    connection.run_timers(up_to=PROBE_TIMEOUT_SECONDS)  # (earlier checks' timers: no-ops)
    assert connection.run_timers(up_to=2.0) == [2.0]
    assert rig.channel.acked == [] and answers(rig.channel) == []
    rig.confirm(4)
    assert rig.channel.acked == [6]
    assert answers(rig.channel)[0]["status"] == "accepted"


def test_refusals_for_one_inbox_share_one_check():
    rig = make_worker()  # the declare hangs until the timeout
    for tag in (1, 2):
        rig.deliver(tag, {"to": "dave", "text": f"m{tag}"})
    rig.confirm(2, ack=False, multiple=True)
    connection = rig.connection
    assert connection.declared == [inbox_queue("dave")]  # a nack: is the inbox full?
    connection.run_timers(up_to=PROBE_TIMEOUT_SECONDS)
    assert rig.counters.held == 2


def test_held_messages_are_dropped_with_the_channel_and_left_to_the_broker():
    rig = make_worker(carol=DOWN)
    rig.deliver(5, {"to": "carol", "text": "hi"})
    rig.confirm(1, ack=False)
    rig.channel.is_open = False  # the connection went: the broker redelivers message 5
    rig.connection.run_timers(up_to=1)
    assert len(rig.channel.published) == 1 and rig.channel.acked == []


def test_unreadable_input_is_rejected_without_requeue_and_the_next_one_served():
    rig = make_worker()
    rig.deliver(1, b"{oops")
    rig.deliver(2, {"to": "bob", "text": "x"}, user_id=None)
    rig.deliver(3, {"to": "bob", "text": "x"}, content_type="text/plain")
    rig.deliver(4, {"to": "bob", "text": "fine"})
    assert rig.channel.rejected == [(1, False), (2, False), (3, False)]
    assert rig.counters.dead_lettered == 3
    rig.confirm(1)
    assert rig.channel.acked == [4]


def test_an_invalid_message_is_answered_and_acked_at_once():
    rig = make_worker()
    rig.deliver(5, {"to": "bob", "text": "  "})
    assert rig.channel.acked == [5]
    assert answers(rig.channel)[0]["detail"] == "text: text must not be empty"


def test_a_reused_client_id_still_gets_each_return_right():
    """Two in-flight publishes with one server id: returns pair up in publish order."""
    rig = make_worker(nobody=MISSING)
    headers = {SENT_MS_HEADER: int(NOW.timestamp() * 1000) - 1000}
    rig.deliver(1, {"to": "nobody", "text": "a"}, message_id="same", headers=headers)
    rig.deliver(2, {"to": "nobody", "text": "a"}, message_id="same", headers=headers)
    first, second = rig.channel.published
    assert first["props"].message_id == second["props"].message_id
    for published in (first, second):
        rig.returned(published)
    assert rig.worker.message_ids == {first["props"].message_id}
    rig.confirm(2, multiple=True)
    assert [a["reason"] for a in answers(rig.channel)] == ["unknown_recipient"] * 2
    assert rig.worker.message_ids == frozenset()


# A direct reply-to address as RabbitMQ 3.10.8 wrote it: the pid's node is "reply@17702804".
NODE_REPLY = (
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxNzcwMjgwNAAABdYAAAAAawb6dA==./gxSazk8/ZvrOdpRosZL+A=="
)


def test_answers_to_a_sender_on_a_node_that_is_down_are_dropped_and_the_message_acked():
    stopped = threading.Event()
    stopped.set()  # the thread that waits for the node's return ends at once
    health = NodeHealth(SETTINGS, stopped)
    rig = make_worker(check=health.answerability)
    node = ("127.0.0.1", 5672)
    health.named(node, "reply@17702804")
    health.down(node)
    rig.deliver(1, {"to": "bob", "text": "hi"}, reply_to=NODE_REPLY)
    rig.confirm(1)
    assert rig.channel.acked == [1]
    assert answers(rig.channel) == []  # RabbitMQ 3.10 would crash the channel on it
    assert rig.counters.answers_dropped == 1

    health.up(node)
    rig.deliver(2, {"to": "bob", "text": "again"}, reply_to=NODE_REPLY)
    rig.confirm(2)
    assert [a["status"] for a in answers(rig.channel)] == ["accepted"]


def test_a_sender_past_its_limit_is_answered_rate_limited_and_acked_without_a_publish():
    clock = [0.0]
    limits = RateLimits(
        sender=Rate(1.0, 2), recipient=UNLIMITED, receipts=UNLIMITED, clock=lambda: clock[0]
    )
    rig = make_worker(limits=limits)
    for tag in (1, 2, 3):
        rig.deliver(tag, {"to": "bob", "text": f"m{tag}"})
    inbox = [p for p in rig.channel.published if p["exchange"] == INBOX_EXCHANGE]
    assert len(inbox) == 2  # the burst
    assert rig.channel.acked == []  # acked after this I/O turn, with others
    rig.connection.run_timers(up_to=0)
    assert rig.channel.acked == [3]  # no inbox publish to wait for
    [answer] = answers(rig.channel)
    assert (answer["status"], answer["reason"]) == ("rejected", "rate_limited")
    assert answer["client_id"] == "client-3"
    assert rig.counters.rate_limited == 1


def test_the_per_recipient_guard_limits_one_pair_only():
    limits = RateLimits(
        sender=UNLIMITED, recipient=Rate(1.0, 2), receipts=UNLIMITED, clock=lambda: 0.0
    )
    rig = make_worker(limits=limits)
    for tag in (1, 2, 3):
        rig.deliver(tag, {"to": "bob", "text": "x"})
    rig.deliver(4, {"to": "carol", "text": "x"})
    recipients = [
        p["routing_key"] for p in rig.channel.published if p["exchange"] == INBOX_EXCHANGE
    ]
    assert recipients == ["bob", "bob", "carol"]
    [answer] = answers(rig.channel)
    assert answer["reason"] == "rate_limited" and "to bob" in answer["detail"]


def test_a_send_without_reply_to_or_id_counts_as_relayed_not_as_a_receipt():
    rig = make_worker()
    rig.deliver(1, {"to": "bob", "text": "no reply-to"}, reply_to=None, message_id=None)
    rig.confirm(1)
    assert (rig.counters.relayed, rig.counters.receipts) == (1, 0)
    rig.deliver(2, {"message_id": "m", "to": "bob", "status": "read"}, type=TYPE_RECEIPT)
    rig.confirm(2)
    assert (rig.counters.relayed, rig.counters.receipts) == (1, 1)


def test_poison_is_dead_lettered_without_an_open_dead_letter_channel_by_rejecting_it():
    rig = make_worker()
    rig.deliver(1, b"[" * 30_000 + b"]" * 30_000)
    rig.deliver(2, {"to": "bob", "text": "x"}, message_id=b"\xff\xfe")
    assert rig.channel.rejected == [(1, False), (2, False)]
    assert rig.counters.dead_lettered == 2


def test_a_flood_is_acked_with_one_multiple_ack_when_nothing_older_is_open():
    limits = RateLimits(
        sender=Rate(1.0, 1), recipient=UNLIMITED, receipts=UNLIMITED, clock=lambda: 0.0
    )
    rig = make_worker(limits=limits)
    rig.deliver(1, {"to": "bob", "text": "in the burst"})  # published, awaits its confirm
    rig.confirm(1)
    multiple: list[tuple[int, bool]] = []
    rig.channel.basic_ack = lambda tag, multiple_=False, **kw: multiple.append(  # type: ignore[method-assign]
        (tag, kw.get("multiple", multiple_))
    )
    for tag in range(2, 50):
        rig.deliver(tag, {"to": "bob", "text": "flood"})
    rig.connection.run_timers(up_to=0)
    assert multiple == [(49, True)]
    assert rig.counters.rate_limited == 48
