"""The client library's errors, where no broker is needed to provoke them."""

import json
from typing import Any

import pika
import pika.exceptions
import pytest

from clients.library.errors import BrokerUnreachable
from clients.library.messaging import (
    MessengerConnection,
    _handle_batch,
    _retryable,
    _SendState,
)
from deploy.local_broker import free_port
from protocol.accounts import Meta
from protocol.messages import RelayAnswer
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


def test_a_lost_connection_or_a_down_queue_is_retried_but_a_refusal_is_not():
    assert _retryable(pika.exceptions.StreamLostError("Transport indicated EOF"))
    assert _retryable(pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED"))
    assert _retryable(pika.exceptions.ChannelWrongStateError("Channel is closed."))
    down = "NOT_FOUND - home node 'rabbit@b' of durable queue 'inbox.a' is down or inaccessible"
    assert _retryable(pika.exceptions.ChannelClosedByBroker(404, down))
    assert not _retryable(pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue"))
    assert not _retryable(pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED"))
    assert not _retryable(pika.exceptions.ProbableAuthenticationError("bad login"))


def test_after_a_failover_everything_unanswered_is_published_again_in_order():
    sends = _SendState()
    first, second = sends.new_send("bob", "one"), sends.new_send("bob", "two")
    receipt = sends.new_receipt("m1", "bob", "delivered")
    sends.on_confirm(first.client_id, ack=True)  # confirmed, but its answer was lost with
    sends.on_confirm(receipt.client_id, ack=True)  # the connection; the receipt is done
    answer = RelayAnswer(status="accepted", client_id=second.client_id, id="s2")
    sends.on_answer(second.client_id, answer)
    assert sends.take_answers([second.client_id]) == {second.client_id: answer}
    again = sends.to_publish_again()
    assert [o.client_id for o in again] == [first.client_id]
    assert again[0].sent_ms == first.sent_ms  # same send time: the relay keeps the server id
    assert first.client_id not in sends.confirmed


def test_an_answer_nobody_waits_for_is_dropped():
    sends = _SendState()
    sent = sends.new_send("bob", "one")
    sends.forget(sent.client_id)
    sends.on_answer(sent.client_id, RelayAnswer(status="accepted", client_id=sent.client_id))
    assert sends.answers == {}


class _FakeImpl:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.log.append(f"ack {delivery_tag} multiple={multiple}")


class _FakeChannel:
    def __init__(self, log: list[str]) -> None:
        self._impl = _FakeImpl(log)


def _delivery(tag: int, kind: str, body: dict[str, str]) -> tuple[int, Any, bytes]:
    return tag, pika.BasicProperties(type=kind), json.dumps(body).encode()


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
    handled = _handle_batch(
        _FakeChannel(log),
        batch,
        lambda ms: log.append("messages " + ",".join(m.id for m in ms)),
        lambda n: log.append(f"receipt {n.message_id}"),
    )
    assert handled == 5
    assert log == ["messages m1,m2", "receipt x", "messages m5", "ack 5 multiple=True"]


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
        _handle_batch(_FakeChannel(log), batch, fail_on_m5, None)
    assert log == ["ack 2 multiple=True"]


def test_a_nacked_message_is_published_again_without_its_confirmed_neighbours():
    sends = _SendState()
    confirmed, nacked = sends.new_send("bob", "one"), sends.new_send("bob", "two")
    sends.on_confirm(confirmed.client_id, ack=True)
    sends.on_confirm(nacked.client_id, ack=False)
    sends.publishing_again([nacked])
    assert nacked.client_id not in sends.nacked
    assert confirmed.client_id in sends.confirmed  # still awaits its answer, not republished
