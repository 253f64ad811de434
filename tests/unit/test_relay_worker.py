"""The worker's plumbing against a fake channel: ack only after the broker's verdict."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pydantic import SecretStr

from protocol.messages import SENT_MS_HEADER
from protocol.nodes import Backoff
from protocol.topology import INBOX_EXCHANGE, TYPE_ANSWER, TYPE_MESSAGE, TYPE_SEND, inbox_queue
from services.relay.settings import RelaySettings
from services.relay.worker import PROBE_TIMEOUT_SECONDS, RelayWorker, reply_to_node

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


def make_worker(**inboxes: int | str) -> tuple[RelayWorker, FakeChannel]:
    """`inboxes`: recipient -> message count, or the 404 text of its passive declare."""
    worker = RelayWorker(RelaySettings(amqp_password=SecretStr("x")), clock=lambda: NOW)
    channel = FakeChannel()
    worker._channel = worker._answer_channel = channel
    worker._connection = FakeConnection(
        {inbox_queue(name): state for name, state in inboxes.items()}
    )
    return worker, channel


def fake_connection(worker: RelayWorker) -> FakeConnection:
    connection = worker._connection
    assert isinstance(connection, FakeConnection)
    return connection


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
    # The answers go out on the answer channel: they take no sequence numbers.
    confirm(worker, 100, multiple=True)
    assert channel.acked == list(range(1, 101))
    assert worker.stats.relayed == 100


def test_a_returned_message_for_a_missing_inbox_is_answered_unknown_recipient_and_acked():
    worker, channel = make_worker(nobody=MISSING)
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


def test_a_nack_from_an_inbox_holding_messages_means_it_is_full():
    worker, channel = make_worker(bob=2)
    deliver(worker, channel, 4, {"to": "bob", "text": "hi"})
    confirm(worker, 1, ack=False)
    assert channel.acked == [4]
    assert answers(channel)[0]["reason"] == "inbox_full"
    assert worker.stats.inbox_full == 1


def test_a_message_returned_while_the_inbox_node_is_down_is_held_and_published_again():
    worker, channel = make_worker(carol=DOWN)
    deliver(worker, channel, 5, {"to": "carol", "text": "are you there?"})
    [first] = channel.published
    worker._on_return(channel, pika.spec.Basic.Return(reply_code=312), first["props"], b"")
    confirm(worker, 1)
    assert channel.acked == [] and answers(channel) == []  # not unknown_recipient: kept
    assert worker.stats.held == 1 and worker.stats.unknown_recipient == 0

    assert fake_connection(worker).run_timers(up_to=0.5) == [0.5]  # the first retry
    again = channel.published[-1]
    assert again["routing_key"] == "carol" and again["mandatory"]
    assert again["props"].message_id == first["props"].message_id  # same server id
    confirm(worker, 2)
    assert channel.acked == [5]
    assert [a["status"] for a in answers(channel)] == ["accepted"]


def test_a_nack_from_an_empty_or_unreachable_inbox_is_retried_with_growing_delays():
    worker, channel = make_worker(bob=0)
    deliver(worker, channel, 6, {"to": "bob", "text": "hi"})
    connection = fake_connection(worker)
    confirm(worker, 1, ack=False)  # no leader: a quorum inbox reports 0 messages
    assert connection.run_timers(up_to=0.5) == [0.5]
    connection.inboxes[inbox_queue("bob")] = DOWN
    confirm(worker, 2, ack=False)
    assert connection.run_timers(up_to=1.0) == [1.0]
    del connection.inboxes[inbox_queue("bob")]  # the declare gets no answer: times out
    confirm(worker, 3, ack=False)
    connection.run_timers(up_to=PROBE_TIMEOUT_SECONDS)  # (earlier checks' timers: no-ops)
    assert connection.run_timers(up_to=2.0) == [2.0]
    assert channel.acked == [] and answers(channel) == []
    confirm(worker, 4)
    assert channel.acked == [6]
    assert answers(channel)[0]["status"] == "accepted"


def test_refusals_for_one_inbox_share_one_check():
    worker, channel = make_worker()  # the declare hangs until the timeout
    for tag in (1, 2):
        deliver(worker, channel, tag, {"to": "dave", "text": f"m{tag}"})
    confirm(worker, 2, ack=False, multiple=True)
    connection = fake_connection(worker)
    assert connection.declared == [inbox_queue("dave")]
    connection.run_timers(up_to=PROBE_TIMEOUT_SECONDS)
    assert worker.stats.held == 2


def test_held_messages_are_dropped_with_the_channel_and_left_to_the_broker():
    worker, channel = make_worker(carol=DOWN)
    deliver(worker, channel, 5, {"to": "carol", "text": "hi"})
    confirm(worker, 1, ack=False)
    channel.is_open = False  # the connection went: the broker redelivers message 5
    fake_connection(worker).run_timers(up_to=1)
    assert len(channel.published) == 1 and channel.acked == []


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
    worker, channel = make_worker(nobody=MISSING)
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


# A direct reply-to address as RabbitMQ 3.10.8 wrote it: the pid's node is "reply@17702804".
NODE_REPLY = (
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxNzcwMjgwNAAABdYAAAAAawb6dA==./gxSazk8/ZvrOdpRosZL+A=="
)


def test_the_node_is_read_from_a_direct_reply_to_address():
    assert reply_to_node(NODE_REPLY) == "reply@17702804"
    for other in (None, "", "inbox.bob", REPLY, "amq.rabbitmq.reply-to.!!!.x"):
        assert reply_to_node(other) is None


def test_answers_to_a_sender_on_a_node_that_is_down_are_dropped_and_the_message_acked():
    worker, channel = make_worker()
    node = ("127.0.0.1", 5672)
    worker._node_names[node] = "reply@17702804"
    worker._stop_requested.set()  # the thread that waits for the node's return ends at once
    worker._node_is_down(node)
    deliver(worker, channel, 1, {"to": "bob", "text": "hi"}, reply_to=NODE_REPLY)
    confirm(worker, 1)
    assert channel.acked == [1]
    assert answers(channel) == []  # RabbitMQ 3.10 would crash the channel on it
    assert worker.stats.answers_dropped == 1

    worker._node_is_up(node)
    deliver(worker, channel, 2, {"to": "bob", "text": "again"}, reply_to=NODE_REPLY)
    confirm(worker, 2)
    assert [a["status"] for a in answers(channel)] == ["accepted"]
