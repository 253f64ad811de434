"""Poison messages: whatever a signed-up user publishes to the outbox, the relay neither
crashes nor loops. What it cannot read goes to relay.dead once and is counted; what it can
read but breaks the rules is answered `rejected: invalid`; honest traffic keeps flowing.

Each payload is one that crashed the relay before (issue 9): some in our decoding, some in
pika's own frame decoder (a timestamp out of range, a table nested deeper than Python's
recursion limit), before any callback of ours ran. (A NaN or infinite float header also
breaks pika's decoder, but RabbitMQ refuses to route it: test_relay_decode_fuzz.py covers
it at pika's level.)
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Callable

import pika
import pytest

from protocol.topology import REPLY_TO, TYPE_RECEIPT
from tests.hostile.relay_attack import (
    RawProperties,
    assert_dead_lettered_once,
    dead_letter_depth,
    nested_table,
    probe,
    props,
    publish,
    table,
)
from tests.integration.messaging_helpers import read_inbox
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    eventually,
    signup_and_login,
)

BAD_UTF8 = b"\xff\xfe\xc3\x28"


@pytest.fixture(scope="module")
def pair(auth: AuthService) -> tuple[User, User]:
    return signup_and_login(auth, "att"), signup_and_login(auth, "vic")


def _send(to: User, text: str = "hello") -> bytes:
    return json.dumps({"to": to.username, "text": text}).encode()


Poison = Callable[[User, User], tuple[bytes, pika.BasicProperties]]

# name -> (body, properties) for an attacker and a victim
POISONS: dict[str, Poison] = {
    "nested JSON 60 KB": lambda a, v: (b"[" * 30_000 + b"]" * 30_000, props(a)),
    "nested JSON object": lambda a, v: (
        b'{"to": ' + b'{"a": ' * 9_000 + b"1" + b"}" * 9_000 + b"}",
        props(a),
    ),
    "integer of 5000 digits": lambda a, v: (
        b'{"to": "' + v.username.encode() + b'", "text": "x", "n": ' + b"9" * 5000 + b"}",
        props(a),
    ),
    "message_id invalid UTF-8": lambda a, v: (_send(v), props(a, message_id=BAD_UTF8)),
    "reply_to invalid UTF-8": lambda a, v: (_send(v), props(a, reply_to=BAD_UTF8)),
    "type invalid UTF-8": lambda a, v: (_send(v), props(a, type=BAD_UTF8)),
    "content_type invalid UTF-8": lambda a, v: (_send(v), props(a, content_type=BAD_UTF8)),
    "header timestamp out of range": lambda a, v: (
        _send(v),
        RawProperties(
            user_id=a.username.encode(),
            headers=table([(b"t", b"T" + struct.pack(">Q", 2**63))]),
        ),
    ),
    "headers nested 3000 deep": lambda a, v: (
        _send(v),
        RawProperties(user_id=a.username.encode(), headers=nested_table(3000)),
    ),
    "receipt with invalid UTF-8 id": lambda a, v: (
        json.dumps({"message_id": "m", "to": v.username, "status": "read"}).encode(),
        props(a, type=TYPE_RECEIPT, message_id=BAD_UTF8, reply_to=None),
    ),
}


@pytest.mark.parametrize("name", list(POISONS))
def test_poison_is_dead_lettered_once_and_honest_traffic_flows(
    name: str, pair: tuple[User, User], auth: AuthService, broker: Broker, relay: RelayProcess
):
    attacker, victim = pair
    before = relay.fresh_counters()
    sessions = relay.wait_consuming().lifecycle.consuming_sessions
    dead = dead_letter_depth(broker)

    publish(broker, attacker, [POISONS[name](attacker, victim)])

    assert_dead_lettered_once(
        broker, relay, sessions=sessions, counted=before.dead_lettered, dead=dead, more=1
    )
    probe(auth, attacker, victim)
    probe(auth, victim, attacker)


@pytest.mark.parametrize(
    "headers",
    [{BAD_UTF8: 1}, {"messenger-sent-ms": BAD_UTF8}, {"messenger-sent-ms": "1"}],
    ids=["header name invalid UTF-8", "sent-ms invalid UTF-8", "sent-ms of 1970"],
)
def test_headers_the_relay_does_not_trust_are_harmless(
    headers: dict[object, object],
    pair: tuple[User, User],
    auth: AuthService,
    broker: Broker,
    relay: RelayProcess,
):
    """Headers the relay does not read, or reads and does not believe: the message is
    relayed as usual, with an id on the relay's clock, not the client's."""
    attacker, victim = pair
    sessions = relay.wait_consuming().lifecycle.consuming_sessions
    text = f"odd headers {uuid.uuid4().hex[:8]}"
    publish(broker, attacker, [(_send(victim, text), props(attacker, headers=headers))])
    [message] = [m for m in read_inbox(auth, victim) if m.text == text]
    id_ms = uuid.UUID(message.id).int >> 80  # the time in the id: the relay's, near now
    assert abs(id_ms - time.time() * 1000) < 10 * 60 * 1000
    status = relay.status()
    assert status is not None and status.lifecycle.consuming_sessions == sessions


@pytest.mark.parametrize(
    "text", ["a\ud800b", "\udfff", "ok \ud83d"], ids=["lone high", "lone low", "half a pair"]
)
def test_lone_surrogate_in_text_is_rejected_as_invalid(
    text: str, pair: tuple[User, User], auth: AuthService, broker: Broker, relay: RelayProcess
):
    """Legal JSON (a `\\ud800` escape) that no UTF-8 text can hold: the sender hears
    `rejected: invalid`, nothing reaches the victim, nothing is redelivered."""
    attacker, victim = pair
    before = relay.fresh_counters()
    sessions = relay.wait_consuming().lifecycle.consuming_sessions
    body = json.dumps({"to": victim.username, "text": text}).encode()  # ASCII, \ud800 escape
    assert b"\\ud" in body or b"\\udfff" in body

    answers: list[dict[str, object]] = []
    connection = broker.connect(attacker.username, attacker.token)
    try:
        channel = connection.channel()
        channel.basic_consume(
            REPLY_TO, lambda _c, _m, _p, b: answers.append(json.loads(b)), auto_ack=True
        )
        channel.basic_publish("outbox", attacker.username, body, props(attacker))

        def answered() -> bool:
            connection.process_data_events(time_limit=0.2)
            return bool(answers)

        eventually(answered, timeout=30)
    finally:
        connection.close()
    assert answers[0]["status"] == "rejected"
    assert answers[0]["reason"] == "invalid"
    assert "surrogate" in str(answers[0]["detail"])
    eventually(lambda: relay.counters.invalid >= before.invalid + 1)
    status = relay.status()
    assert status is not None and status.lifecycle.consuming_sessions == sessions
    probe(auth, attacker, victim)


def test_poison_burst_does_not_stop_others(
    pair: tuple[User, User], auth: AuthService, broker: Broker, relay: RelayProcess
):
    """Every poison at once, twice over: the relay works through them in one session."""
    attacker, victim = pair
    before = relay.fresh_counters()
    sessions = relay.wait_consuming().lifecycle.consuming_sessions
    dead = dead_letter_depth(broker)
    burst = [make(attacker, victim) for make in POISONS.values()] * 2
    publish(broker, attacker, burst)
    assert_dead_lettered_once(
        broker, relay, sessions=sessions, counted=before.dead_lettered, dead=dead, more=len(burst)
    )
    probe(auth, victim, attacker)
