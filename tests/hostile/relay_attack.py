"""What the relay's hostile tests share: publishing as an attacker with plain pika (raw
property bytes when pika would not encode them), and a probe pair that shows honest
traffic still flows, in order, each message once."""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pika

from protocol.topology import DEAD_LETTER_QUEUE, OUTBOX_EXCHANGE, OUTBOX_QUEUES, REPLY_TO
from tests.integration.messaging_helpers import connect, read_inbox
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    close_quietly,
    eventually,
)

# AMQP 0-9-1 basic property flags (pika.spec.BasicProperties.FLAG_*)
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE = 1 << 15, 1 << 13, 1 << 12
_REPLY_TO, _MESSAGE_ID, _USER_ID = 1 << 9, 1 << 7, 1 << 4


def shortstr(value: bytes) -> bytes:
    return struct.pack(">B", len(value)) + value


def table(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """An AMQP field table from already encoded (name, type+value) pairs."""
    body = b"".join(shortstr(name) + value for name, value in fields)
    return struct.pack(">I", len(body)) + body


def nested_table(depth: int) -> bytes:
    """{"a": {"a": ... {}}} `depth` deep: pika decodes it recursively."""
    inner = table([])
    for _ in range(depth):
        inner = table([(b"a", b"F" + inner)])
    return inner


class RawProperties(pika.BasicProperties):  # type: ignore[misc]
    """Basic properties sent as the bytes given, as a hostile client can (pika's own encoder
    would refuse or never produce them)."""

    def __init__(
        self,
        *,
        user_id: bytes,
        headers: bytes | None = None,
        message_id: bytes | None = b"raw",
        reply_to: bytes | None = REPLY_TO.encode(),
        content_type: bytes = b"application/json",
    ) -> None:
        super().__init__()
        flags = _CONTENT_TYPE | _DELIVERY_MODE | _USER_ID
        pieces = [shortstr(content_type)]
        if headers is not None:
            flags |= _HEADERS
            pieces.append(headers)
        pieces.append(b"\x02")  # persistent
        if reply_to is not None:
            flags |= _REPLY_TO
            pieces.append(shortstr(reply_to))
        if message_id is not None:
            flags |= _MESSAGE_ID
            pieces.append(shortstr(message_id))
        pieces.append(shortstr(user_id))
        self._raw = struct.pack(">H", flags) + b"".join(pieces)

    def encode(self) -> list[bytes]:
        return [self._raw]


def props(user: User, **overrides: Any) -> pika.BasicProperties:
    """What an honest client sets on a send, with `overrides`."""
    fields: dict[str, Any] = {
        "content_type": "application/json",
        "user_id": user.username,
        "message_id": uuid.uuid4().hex,
        "reply_to": REPLY_TO,
        "delivery_mode": pika.DeliveryMode.Persistent,
    }
    fields.update(overrides)
    return pika.BasicProperties(**fields)


def publish(broker: Broker, user: User, messages: Sequence[tuple[bytes, pika.BasicProperties]]):
    """Publish to the outbox as `user` with plain pika, confirmed, then disconnect."""
    connection = broker.connect(user.username, user.token)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)  # reply_to needs it
        for body, properties in messages:
            channel.basic_publish(OUTBOX_EXCHANGE, user.username, body, properties)
    finally:
        close_quietly(connection)


def probe(auth: AuthService, sender: User, recipient: User, count: int = 5) -> None:
    """Honest traffic flows: `count` messages, each accepted, arrive in order, once each."""
    tag = uuid.uuid4().hex[:6]
    texts = [f"probe {tag} {i}" for i in range(count)]
    with connect(auth, sender) as connection:
        for text in texts:
            answer = connection.send(recipient.username, text, timeout=30)
            assert answer.status == "accepted", answer
    received = [m.text for m in read_inbox(auth, recipient, idle_timeout=2.0)]
    assert [t for t in received if t.startswith(f"probe {tag}")] == texts


def dead_letter_depth(broker: Broker) -> int:
    return broker.queue_depths().get(DEAD_LETTER_QUEUE, 0)


def outbox_empty(broker: Broker) -> bool:
    depths = broker.queue_depths()
    return all(depths.get(queue, 0) == 0 for queue in OUTBOX_QUEUES)


def assert_dead_lettered_once(
    broker: Broker, relay: RelayProcess, *, sessions: int, counted: int, dead: int, more: int
) -> None:
    """`more` poisons went to relay.dead and were counted, the outbox drained, and the relay
    kept its connection (no crash, no reconnect): nothing was delivered again in a loop."""
    assert relay.alive, f"the relay died:\n{relay.log()[-3000:]}"
    eventually(lambda: relay.counters.dead_lettered >= counted + more, timeout=30)
    eventually(lambda: dead_letter_depth(broker) >= dead + more, timeout=30)
    eventually(lambda: outbox_empty(broker), timeout=30)
    time.sleep(1.5)  # a loop would show as more dead letters, or a reconnect
    status = relay.status()
    assert status is not None
    assert status.counters.dead_lettered == counted + more
    assert dead_letter_depth(broker) == dead + more
    assert status.lifecycle.consuming_sessions == sessions, relay.log()[-3000:]
    assert relay.alive
