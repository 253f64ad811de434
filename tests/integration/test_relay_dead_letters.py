"""What the relay cannot read is dead-lettered and counted; the next good message flows."""

from __future__ import annotations

import json

import pika

from protocol.topology import DEAD_LETTER_QUEUE, OUTBOX_EXCHANGE, OUTBOX_QUEUES, REPLY_TO
from tests.integration.messaging_helpers import connect, read_inbox
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    close_quietly,
    eventually,
    signup_and_login,
)


def test_unreadable_messages_are_dead_lettered_and_counted(
    auth: AuthService, broker: Broker, relay: RelayProcess
):
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    dead_before = broker.queue_depths().get(DEAD_LETTER_QUEUE, 0)
    counted_before = relay.fresh_counters().dead_lettered

    def props(**overrides: object) -> pika.BasicProperties:
        fields: dict[str, object] = {
            "content_type": "application/json",
            "user_id": alice.username,
            "message_id": "raw",
            "reply_to": REPLY_TO,
            "delivery_mode": pika.DeliveryMode.Persistent,
        }
        fields.update(overrides)
        return pika.BasicProperties(**fields)

    good = json.dumps({"to": bob.username, "text": "fine"}).encode()
    bad = [
        (b'{"to": "' + bob.username.encode() + b'", "text": ', props()),  # malformed JSON
        (good, props(user_id=None)),  # no user_id: the sender is unknown
        (b"\xff\xfe not UTF-8", props()),  # (a body over MAX_BODY_BYTES: the broker refuses it)
        (good, props(content_type="text/plain")),
    ]
    connection = broker.connect(alice.username, alice.token)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)  # reply_to needs it
        for body, properties in bad:
            channel.basic_publish(OUTBOX_EXCHANGE, alice.username, body, properties)
    finally:
        close_quietly(connection)

    eventually(lambda: relay.counters.dead_lettered == counted_before + 4)
    eventually(lambda: broker.queue_depths().get(DEAD_LETTER_QUEUE, 0) == dead_before + 4)
    assert relay.alive

    with connect(auth, alice) as sender:
        assert sender.send(bob.username, "still served?", timeout=15).status == "accepted"
    assert [m.text for m in read_inbox(auth, bob)] == ["still served?"]
    eventually(lambda: all(broker.queue_depths()[q] == 0 for q in OUTBOX_QUEUES))
