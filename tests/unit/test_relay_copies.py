"""Carbons and archive copies: what routing decides, and that the worker acks the outbox
message only once every copy is confirmed."""

import json
from datetime import UTC, datetime
from typing import Any, cast

import pika
import pika.frame
import pika.spec

from protocol.messages import NOTIFY_SENDER_HEADER
from protocol.topology import (
    ARCHIVE_EXCHANGE,
    CONTENT_TYPE,
    INBOX_EXCHANGE,
    TYPE_RECEIPT,
    TYPE_SEND,
    carbon_key,
)
from services.relay.routing import Copy, Deliver, Incoming, route
from tests.unit.test_relay_worker import make_worker

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def routed(body: dict[str, Any], kind: str = TYPE_SEND, sender: str = "alice") -> Deliver:
    incoming = Incoming(
        body=json.dumps(body).encode(),
        user_id=sender,
        content_type=CONTENT_TYPE,
        type=kind,
        message_id="c-1",
        reply_to=None,
    )
    outcome = route(incoming, now=NOW, new_id="00000000-0000-7000-8000-000000000001")
    assert isinstance(outcome, Deliver)
    return outcome


def test_a_message_goes_to_the_recipient_then_a_carbon_and_the_archive():
    deliver = routed({"to": "bob", "text": "hi"})
    assert (deliver.exchange, deliver.recipient) == (INBOX_EXCHANGE, "bob")
    assert deliver.copies == (Copy(INBOX_EXCHANGE, carbon_key("alice")), Copy(ARCHIVE_EXCHANGE, ""))


def test_a_note_to_self_has_no_carbon():
    deliver = routed({"to": "alice", "text": "note"})
    assert deliver.copies == (Copy(ARCHIVE_EXCHANGE, ""),)


def test_a_read_receipt_reaches_the_sender_the_readers_devices_and_the_archive():
    deliver = routed({"message_id": "m1", "to": "bob", "status": "read"}, TYPE_RECEIPT)
    assert (deliver.exchange, deliver.recipient) == (INBOX_EXCHANGE, "bob")
    archive = Copy(ARCHIVE_EXCHANGE, "", ((NOTIFY_SENDER_HEADER, 1),))
    assert deliver.copies == (Copy(INBOX_EXCHANGE, carbon_key("alice")), archive)


def test_with_notify_sender_false_the_original_sender_hears_nothing():
    body = {"message_id": "m1", "to": "bob", "status": "read", "notify_sender": False}
    deliver = routed(body, TYPE_RECEIPT)
    assert deliver.exchange == ARCHIVE_EXCHANGE
    assert deliver.headers == ((NOTIFY_SENDER_HEADER, 0),)
    assert deliver.copies == (Copy(INBOX_EXCHANGE, carbon_key("alice")),)
    body["status"] = "delivered"
    assert routed(body, TYPE_RECEIPT).copies == ()


def ack(rig, seq: int, *, nack: bool = False) -> None:
    method = pika.spec.Basic.Nack if nack else pika.spec.Basic.Ack
    rig.worker.on_confirm(pika.frame.Method(1, method(delivery_tag=seq)))


def test_the_outbox_message_is_acked_once_every_copy_is_confirmed():
    rig = make_worker()
    rig.deliver(7, {"to": "bob", "text": "hi"})
    ack(rig, 1)  # the recipient's: now the copies go out, nothing is acked yet
    targets = [(p["exchange"], p["routing_key"]) for p in rig.channel.published]
    assert targets == [(INBOX_EXCHANGE, "bob"), (INBOX_EXCHANGE, "alice/carbon"),
                       (ARCHIVE_EXCHANGE, "")]  # fmt: skip
    assert rig.channel.acked == []
    ack(rig, 2)
    assert rig.channel.acked == []
    ack(rig, 3)
    assert rig.channel.acked == [7]
    [answer] = [p for p in rig.channel.published if p["routing_key"].startswith("amq.")]
    assert answer["body"]["status"] == "accepted"


def test_a_nacked_archive_copy_is_published_again_and_a_returned_carbon_is_fine():
    rig = make_worker()
    rig.deliver(7, {"to": "bob", "text": "hi"})
    ack(rig, 1)
    carbon = rig.channel.published[1]
    rig.worker.on_return(
        cast(Any, rig.channel),
        pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE"),
        carbon["props"],
        b"",
    )  # the sender has no device queue
    ack(rig, 2)
    ack(rig, 3, nack=True)
    assert rig.channel.acked == []
    assert rig.connection.run_timers(up_to=1.0) == [1.0]
    again = rig.channel.published[-1]
    assert again["exchange"] == ARCHIVE_EXCHANGE
    assert again["props"].message_id == carbon["props"].message_id
    ack(rig, 4)
    assert rig.channel.acked == [7]
