"""The client library's parts where no broker is needed: errors, the ledger, batches."""

import contextlib
import json
from typing import Any, cast

import pika
import pika.exceptions
import pika.spec
import pytest

from clients.library.batches import Delivery, hand_over
from clients.library.connection import FOREVER, Connection
from clients.library.consumer import InboxConsumer
from clients.library.errors import BrokerUnreachable
from clients.library.ledger import MAX_NACK_RETRIES, SendLedger
from clients.library.messaging import MessengerConnection
from deploy.local_broker import free_port
from protocol.accounts import Meta
from protocol.messages import ReceiptRequest, RelayAnswer, SendRequest
from protocol.topology import TYPE_MESSAGE, TYPE_RECEIPT_NOTICE

T0 = "2026-01-02T10:00:00+00:00"


def test_nobody_listening_is_broker_unreachable_with_a_readable_reason():
    port = free_port()
    meta = Meta(protocol_version=1, amqp_url=f"amqp://127.0.0.1:{port}", vhost="messenger")
    with pytest.raises(BrokerUnreachable) as caught:
        MessengerConnection.open(meta, "alice", "secret")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message.lower()
    assert "secret" not in message


def test_an_unusable_broker_url_is_reported():
    meta = Meta(protocol_version=1, amqp_url="http://example.org", vhost="messenger")
    with pytest.raises(BrokerUnreachable, match="unusable broker URL"):
        MessengerConnection.open(meta, "alice", "secret")


def test_every_announced_node_is_tried_and_each_named_when_none_answers():
    ports = [free_port(), free_port()]
    urls = [f"amqp://127.0.0.1:{port}" for port in ports]
    meta = Meta(protocol_version=1, amqp_url=urls[0], amqp_urls=urls, vhost="messenger")
    with pytest.raises(BrokerUnreachable, match="cannot reach any broker node") as caught:
        MessengerConnection.open(meta, "alice", "secret")
    assert all(f"127.0.0.1:{port}" in str(caught.value) for port in ports)


def test_after_a_failover_everything_unanswered_is_published_again_in_order():
    ledger = SendLedger()
    first, second = ledger.new_send("bob", "one"), ledger.new_send("bob", "two")
    receipt = ledger.new_receipt("m1", "bob", "delivered")
    ledger.on_confirm(first.client_id, ack=True)  # confirmed, but its answer was lost with
    ledger.on_confirm(receipt.client_id, ack=True)  # the connection; the receipt is done
    answer = RelayAnswer(status="accepted", client_id=second.client_id, id="s2")
    ledger.on_answer(second.client_id, answer)
    assert ledger.take_answers([second.client_id]) == {second.client_id: answer}
    again = ledger.to_publish_again()
    assert [o.client_id for o in again] == [first.client_id]
    assert again[0].sent_ms == first.sent_ms  # same send time: the relay keeps the server id
    assert not ledger.is_confirmed(first.client_id)


def test_an_answer_nobody_waits_for_is_dropped():
    ledger = SendLedger()
    sent = ledger.new_send("bob", "one")
    ledger.forget(sent.client_id)
    ledger.on_answer(sent.client_id, RelayAnswer(status="accepted", client_id=sent.client_id))
    assert ledger.answered([sent.client_id]) == []
    assert ledger.take_answers([sent.client_id]) == {}


def _delivery(tag: int, kind: str, body: dict[str, str]) -> Delivery:
    return Delivery(tag, kind, json.dumps(body).encode())


def _inbox_message(message_id: str) -> dict[str, str]:
    return {"id": message_id, "from": "bob", "to": "alice", "text": "hi", "sent_at": T0}


def test_a_batch_is_handed_over_in_order_and_acked_once_after_the_callbacks():
    log: list[str] = []
    notice = {"message_id": "x", "reader": "bob", "status": "delivered", "at": T0}
    batch = [
        _delivery(1, TYPE_MESSAGE, _inbox_message("m1")),
        _delivery(2, TYPE_MESSAGE, _inbox_message("m2")),
        _delivery(3, TYPE_RECEIPT_NOTICE, notice),
        _delivery(4, TYPE_MESSAGE, {"garbage": "1"}),
        _delivery(5, TYPE_MESSAGE, _inbox_message("m5")),
    ]
    handled = hand_over(
        batch,
        lambda ms: log.append("messages " + ",".join(m.id for m in ms)),
        lambda n: log.append(f"receipt {n.message_id}"),
        lambda tag: log.append(f"ack through {tag}"),
    )
    assert handled == 5
    assert log == ["messages m1,m2", "receipt x", "messages m5", "ack through 5"]


def test_when_a_callback_fails_only_what_was_handled_before_it_is_acked():
    log: list[str] = []

    def fail_on_m5(messages: list[Any]) -> None:
        if messages[0].id == "m5":
            raise RuntimeError("disk full")

    notice = {"message_id": "x", "reader": "bob", "status": "delivered", "at": T0}
    batch = [
        _delivery(1, TYPE_MESSAGE, _inbox_message("m1")),
        _delivery(2, TYPE_RECEIPT_NOTICE, notice),
        _delivery(3, TYPE_MESSAGE, _inbox_message("m5")),
    ]
    with pytest.raises(RuntimeError):
        hand_over(batch, fail_on_m5, None, lambda tag: log.append(f"ack through {tag}"))
    assert log == ["ack through 2"]


def test_a_nacked_message_is_published_again_without_its_confirmed_neighbours():
    ledger = SendLedger()
    confirmed, nacked = ledger.new_send("bob", "one"), ledger.new_send("bob", "two")
    ledger.on_confirm(confirmed.client_id, ack=True)
    ledger.on_confirm(nacked.client_id, ack=False)
    assert ledger.due_again([confirmed.client_id, nacked.client_id], now=0.0) == []
    due = ledger.due_again([confirmed.client_id, nacked.client_id], now=0.5)  # backoff over
    assert due == [nacked]
    assert nacked.client_id not in ledger.nacked()
    assert ledger.is_confirmed(confirmed.client_id)  # still awaits its answer, not republished


def test_a_message_nacked_too_often_is_given_up():
    ledger = SendLedger()
    sent = ledger.new_send("bob", "one")
    for attempt in range(MAX_NACK_RETRIES):
        ledger.on_confirm(sent.client_id, ack=False)
        assert ledger.due_again([sent.client_id], now=1000.0 * attempt) == []  # backoff starts
        assert ledger.due_again([sent.client_id], now=1000.0 * attempt + 5.0) == [sent]
    ledger.on_confirm(sent.client_id, ack=False)
    assert ledger.due_again([sent.client_id], now=1e9) is None


def test_bodies_are_the_protocol_models_and_the_relay_judges_them():
    ledger = SendLedger()
    body = ledger.new_send("Not-A-Name", "  hi").body  # not checked here: the relay answers
    assert SendRequest.model_construct(**json.loads(body)).to == "Not-A-Name"
    receipt = ledger.new_receipt("m1", "bob", "read").body
    assert ReceiptRequest.model_validate_json(receipt).status == "read"


class _ScriptedChannel:
    """A blocking channel whose consumer gets `bodies`, one per I/O turn, then `then`."""

    def __init__(self, log: list[str], bodies: list[bytes], then: BaseException | None) -> None:
        self.log, self.bodies, self.then = log, list(bodies), then
        self.is_open = True
        self.tag = 0
        self.deliver: Any = None

    def basic_qos(self, prefetch_count: int) -> None:
        pass

    def basic_consume(self, queue: str, on_message: Any) -> str:
        self.log.append(f"consume {queue}")
        self.deliver = on_message
        return "ctag"

    def turn(self) -> None:
        if self.bodies:
            self.tag += 1
            method = pika.spec.Basic.Deliver(delivery_tag=self.tag)
            self.deliver(self, method, pika.BasicProperties(type=TYPE_MESSAGE), self.bodies.pop(0))
        elif self.then is not None:
            self.is_open = False
            raise self.then

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.log.append(f"ack {delivery_tag}")

    def close(self) -> None:
        self.is_open = False


class _ScriptedConnection:
    """Stands in for clients.library.connection.Connection: one scripted channel per
    pika connection; `reconnect()` moves to the next."""

    username = "alice"

    def __init__(self, channels: list[_ScriptedChannel], stop_after: int) -> None:
        self.channels = channels
        self.generation = 1
        self.is_open = True
        self.reconnects: list[tuple[float, Any]] = []
        self.stop_after = stop_after
        self.consumer: InboxConsumer | None = None
        self.turns = 0

    def ensure_open(self) -> None:
        pass

    def translated_errors(self) -> Any:
        return contextlib.nullcontext()

    def channel(self) -> _ScriptedChannel:
        return self.channels[self.generation - 1]

    def pump(self, _time_limit: float = 0) -> None:
        self.turns += 1
        if self.turns > self.stop_after and self.consumer is not None:
            self.consumer.stop()
        self.channel().turn()

    def reconnect(self, lost: BaseException, window: float, interrupt: Any) -> None:
        self.reconnects.append((window, interrupt))
        self.generation += 1


def test_a_consumer_reconnects_subscribes_again_and_says_so():
    log: list[str] = []
    body = json.dumps(_inbox_message("m1")).encode()
    lost = pika.exceptions.StreamLostError("Transport indicated EOF")
    first = _ScriptedChannel(log, [body], then=lost)
    second = _ScriptedChannel(log, [body.replace(b"m1", b"m2")], then=None)
    connection = _ScriptedConnection([first, second], stop_after=4)
    inbox = InboxConsumer(cast(Connection, connection))
    connection.consumer = inbox
    events: list[str] = []
    handled = inbox.run(
        lambda ms: log.append("messages " + ",".join(m.id for m in ms)),
        give_up_after=FOREVER,
        on_lost=lambda error: events.append(f"lost: {error}"),
        on_back=lambda: events.append("back"),
    )
    assert handled == 2
    assert log == ["consume inbox.alice", "messages m1", "ack 1",
                   "consume inbox.alice", "messages m2", "ack 1"]  # fmt: skip
    assert connection.reconnects == [(FOREVER, inbox.stopping)]
    assert events == ["lost: lost the broker (Transport indicated EOF)", "back"]
    assert not first.is_open and not second.is_open


def test_a_refusal_is_not_reconnected():
    refused = pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED")
    channel = _ScriptedChannel([], [], then=refused)
    connection = _ScriptedConnection([channel], stop_after=10)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        InboxConsumer(cast(Connection, connection)).run(lambda ms: None)
    assert connection.reconnects == []
