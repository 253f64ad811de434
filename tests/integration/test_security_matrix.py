"""The broker is the access boundary: every case here is refused by RabbitMQ itself.

Each case logs in as a real user (alice, with her session token) and tries one thing it must
not do; the channel (or the connection) is closed by the broker with the expected code. A
few positive controls show the refusals are not simply "everything is refused".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from protocol.messages import SendRequest, encode
from protocol.topology import (
    CONTENT_TYPE,
    DEAD_LETTER_EXCHANGE,
    INBOX_EXCHANGE,
    OUTBOX_EXCHANGE,
    REPLY_TO,
    TYPE_SEND,
    inbox_queue,
    outbox_queue,
)
from tests.integration.stack import (
    AuthService,
    Broker,
    User,
    close_quietly,
    login_refused,
    signup_and_login,
)

ACCESS_REFUSED = 403
PRECONDITION_FAILED = 406


@dataclass
class Pair:
    alice: User
    bob: User


@pytest.fixture(scope="module")
def pair(auth: AuthService) -> Pair:
    return Pair(signup_and_login(auth, "alice"), signup_and_login(auth, "bob"))


@pytest.fixture
def channel(broker: Broker, pair: Pair) -> Iterator[BlockingChannel]:
    """A channel of alice's own connection, opened with her session token."""
    connection = broker.connect(pair.alice.username, pair.alice.token)
    try:
        yield connection.channel()
    finally:
        close_quietly(connection)


def send_body(to: str) -> bytes:
    return encode(SendRequest(to=to, text="security matrix"))


def publish(
    channel: BlockingChannel, exchange: str, routing_key: str, user_id: str, body: bytes = b"{}"
) -> None:
    """Publish with confirms on, so a refusal surfaces here as the channel closing."""
    channel.confirm_delivery()
    channel.basic_publish(
        exchange,
        routing_key,
        body,
        pika.BasicProperties(
            user_id=user_id,
            content_type=CONTENT_TYPE,
            type=TYPE_SEND,
            message_id=str(uuid.uuid4()),
            delivery_mode=pika.DeliveryMode.Persistent,
        ),
    )


Attempt = Callable[[BlockingChannel, Pair], object]

REFUSED: dict[str, tuple[int, Attempt]] = {
    "consume another user's inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.basic_consume(inbox_queue(p.bob.username), lambda *_: None),
    ),
    "basic.get on another user's inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.basic_get(inbox_queue(p.bob.username)),
    ),
    "consume a relay outbox shard": (
        ACCESS_REFUSED,
        lambda ch, p: ch.basic_consume(outbox_queue(0), lambda *_: None),
    ),
    "consume the dead-letter queue": (
        ACCESS_REFUSED,
        lambda ch, p: ch.basic_get(DEAD_LETTER_EXCHANGE),
    ),
    "publish to the outbox as another user": (
        PRECONDITION_FAILED,
        lambda ch, p: publish(
            ch, OUTBOX_EXCHANGE, p.bob.username, p.bob.username, send_body(p.alice.username)
        ),
    ),
    "publish to the outbox without a user_id header being ours": (
        PRECONDITION_FAILED,
        lambda ch, p: publish(ch, OUTBOX_EXCHANGE, p.alice.username, "relay"),
    ),
    "publish to the inbox exchange": (
        ACCESS_REFUSED,
        lambda ch, p: publish(ch, INBOX_EXCHANGE, p.bob.username, p.alice.username),
    ),
    "publish to the default exchange": (
        ACCESS_REFUSED,
        lambda ch, p: publish(ch, "", inbox_queue(p.bob.username), p.alice.username),
    ),
    "publish to the dead-letter exchange": (
        ACCESS_REFUSED,
        lambda ch, p: publish(ch, DEAD_LETTER_EXCHANGE, "", p.alice.username),
    ),
    "publish to amq.topic": (
        ACCESS_REFUSED,
        lambda ch, p: publish(ch, "amq.topic", "x", p.alice.username),
    ),
    "declare a new queue": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_declare(f"sneaky.{uuid.uuid4().hex}"),
    ),
    "declare a server-named exclusive queue": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_declare("", exclusive=True),
    ),
    "declare a queue named like another user's future inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_declare(inbox_queue(f"future{uuid.uuid4().hex[:8]}")),
    ),
    "redeclare the own inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_declare(
            inbox_queue(p.alice.username), durable=True, arguments={"x-queue-type": "classic"}
        ),
    ),
    "declare an exchange": (
        ACCESS_REFUSED,
        lambda ch, p: ch.exchange_declare(f"sneaky.{uuid.uuid4().hex}", "fanout"),
    ),
    "bind the own inbox to another user's routing key": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_bind(inbox_queue(p.alice.username), INBOX_EXCHANGE, p.bob.username),
    ),
    "bind the own inbox to the outbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_bind(inbox_queue(p.alice.username), OUTBOX_EXCHANGE, "1"),
    ),
    "bind another user's inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_bind(inbox_queue(p.bob.username), INBOX_EXCHANGE, p.alice.username),
    ),
    "bind the outbox exchange to the inbox exchange": (
        ACCESS_REFUSED,
        lambda ch, p: ch.exchange_bind(OUTBOX_EXCHANGE, INBOX_EXCHANGE, p.bob.username),
    ),
    "unbind another user's inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_unbind(inbox_queue(p.bob.username), INBOX_EXCHANGE, p.bob.username),
    ),
    "delete another user's inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_delete(inbox_queue(p.bob.username)),
    ),
    "delete the own inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_delete(inbox_queue(p.alice.username)),
    ),
    "delete a relay outbox shard": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_delete(outbox_queue(0)),
    ),
    "delete the outbox exchange": (
        ACCESS_REFUSED,
        lambda ch, p: ch.exchange_delete(OUTBOX_EXCHANGE),
    ),
    "delete the inbox exchange": (
        ACCESS_REFUSED,
        lambda ch, p: ch.exchange_delete(INBOX_EXCHANGE),
    ),
    "purge another user's inbox": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_purge(inbox_queue(p.bob.username)),
    ),
    "purge a relay outbox shard": (
        ACCESS_REFUSED,
        lambda ch, p: ch.queue_purge(outbox_queue(0)),
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_broker_refuses(case: str, channel: BlockingChannel, pair: Pair):
    code, attempt = REFUSED[case]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        attempt(channel, pair)
        channel.basic_qos(prefetch_count=1)  # a refusal without a reply shows up here
    assert closed.value.reply_code == code, closed.value


LOGINS: dict[str, Callable[[Broker, Pair], tuple[str, str]]] = {
    "wrong password": lambda b, p: (p.alice.username, p.alice.password + "x"),
    "unknown user": lambda b, p: (f"ghost{uuid.uuid4().hex[:8]}", p.alice.password),
    "another user's token": lambda b, p: (p.bob.username, p.alice.token),
    "an empty password": lambda b, p: (p.alice.username, ""),
    "reserved name guest": lambda b, p: ("guest", "guest"),
    "reserved name admin": lambda b, p: ("admin", "admin"),
    "reserved name system": lambda b, p: ("system", p.alice.token),
    "the relay account with a user's token": lambda b, p: ("relay", p.alice.token),
    "the auth account with a wrong password": lambda b, p: ("auth", "not the password"),
    "a malformed name": lambda b, p: ("../" + p.alice.username, p.alice.token),
}


@pytest.mark.parametrize("case", list(LOGINS))
def test_the_broker_refuses_the_login_with(case: str, broker: Broker, pair: Pair):
    username, password = LOGINS[case](broker, pair)
    assert login_refused(broker, username, password)


def test_the_broker_refuses_an_expired_token(broker: Broker, auth: AuthService, pair: Pair):
    import time

    from services.auth.store import Store
    from services.auth.tokens import new_token, token_hash

    token = new_token()
    store = Store(auth.db_path)
    try:
        store.add_session(token_hash(token), pair.alice.username, time.time() - 60)
    finally:
        store.close()
    assert login_refused(broker, pair.alice.username, token)


def test_the_broker_refuses_a_vhost_other_than_messenger(broker: Broker, pair: Pair):
    assert login_refused(broker, pair.alice.username, pair.alice.token, vhost="/")


@pytest.mark.parametrize("path", ["user", "vhost", "resource", "topic"])
def test_the_broker_endpoints_are_unreachable_through_the_public_listener(
    auth: AuthService, pair: Pair, path: str
):
    form = {
        "username": pair.alice.username,
        "password": pair.alice.token,
        "vhost": "messenger",
        "resource": "queue",
        "name": inbox_queue(pair.bob.username),
        "permission": "read",
    }
    response = httpx.post(f"{auth.url}/broker/{path}", data=form, timeout=10)
    assert response.status_code == 404
    assert "allow" not in response.text


# -- positive controls ------------------------------------------------------------------------


def test_a_user_may_consume_the_own_inbox(channel: BlockingChannel, pair: Pair):
    tag = channel.basic_consume(inbox_queue(pair.alice.username), lambda *_: None)
    channel.basic_cancel(tag)


def test_a_user_may_publish_to_the_outbox_as_itself_with_a_reply_to(
    channel: BlockingChannel, pair: Pair
):
    # A real send to herself, so a relay that picks it up later delivers it harmlessly.
    channel.basic_consume(REPLY_TO, lambda *_: None, auto_ack=True)
    channel.confirm_delivery()
    channel.basic_publish(
        OUTBOX_EXCHANGE,
        pair.alice.username,
        send_body(pair.alice.username),
        pika.BasicProperties(
            user_id=pair.alice.username,
            content_type=CONTENT_TYPE,
            type=TYPE_SEND,
            message_id=str(uuid.uuid4()),
            reply_to=REPLY_TO,
            delivery_mode=pika.DeliveryMode.Persistent,
        ),
        mandatory=True,
    )
    channel.basic_qos(prefetch_count=1)  # the channel is still open
