"""The broker's limits: the largest message, and the length and byte limits of the outbox
shards and relay.dead, which refuse (a nack the publisher hears) rather than drop.

Before (issue 9), three 100 MB publishes were accepted and dead-lettered: 315 MB in
relay.dead in 6 s, the relay at 232 MB of memory, the broker at 2 GB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pika.exceptions
import pytest

from protocol.messages import MAX_BODY_BYTES
from protocol.topology import DEAD_LETTER_QUEUE, OUTBOX_EXCHANGE, OUTBOX_QUEUES, VHOST
from tests.hostile.relay_attack import dead_letter_depth, outbox_empty, probe, props, publish
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    close_quietly,
    eventually,
    signup_and_login,
)


@pytest.fixture(scope="module")
def pair(auth: AuthService) -> tuple[User, User]:
    return signup_and_login(auth, "big"), signup_and_login(auth, "small")


@contextmanager
def policy(
    broker: Broker, name: str, pattern: str, definition: dict[str, object]
) -> Iterator[None]:
    """A policy of higher priority than definitions.json's, for the duration of a test."""
    broker.node.ctl(
        "set_policy", "-p", VHOST, "--priority", "10", "--apply-to", "queues",
        name, pattern, json.dumps(definition),
    )  # fmt: skip
    try:
        yield
    finally:
        broker.node.ctl("clear_policy", "-p", VHOST, name)


def _padded(to: User, size: int) -> bytes:
    """A send request of exactly `size` bytes (JSON with an ignored field as padding)."""
    head = json.dumps({"to": to.username, "text": "big", "pad": ""}).encode()
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


def test_the_broker_refuses_a_body_larger_than_a_message_can_be(
    pair: tuple[User, User], broker: Broker, relay: RelayProcess
):
    big, small = pair
    connection = broker.connect(big.username, big.token)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            OUTBOX_EXCHANGE, big.username, _padded(small, MAX_BODY_BYTES), props(big, reply_to=None)
        )
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish(
                OUTBOX_EXCHANGE,
                big.username,
                _padded(small, MAX_BODY_BYTES + 1),
                props(big, reply_to=None),
            )
        assert refused.value.reply_code == 406
        assert "max size" in refused.value.reply_text
    finally:
        close_quietly(connection)
    eventually(lambda: outbox_empty(broker))


def test_the_policies_limit_the_outbox_and_relay_dead(broker: Broker):
    out = broker.node.ctl(
        "list_queues", "-p", VHOST, "--no-table-headers", "--quiet", "name", "policy"
    )
    policies = dict(line.split("\t") for line in out.splitlines() if "\t" in line)
    assert {policies[queue] for queue in OUTBOX_QUEUES} == {"outbox-limit"}
    assert policies[DEAD_LETTER_QUEUE] == "dead-letter-limit"


def test_a_full_outbox_nacks_the_publisher(pair: tuple[User, User], broker: Broker):
    """`overflow: reject-publish`: the sender hears a nack, nothing is dropped silently."""
    big, small = pair
    with policy(
        broker,
        "test-outbox-full",
        r"^relay\.outbox\.",
        {"max-length": 0, "overflow": "reject-publish"},
    ):
        connection = broker.connect(big.username, big.token)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            with pytest.raises(pika.exceptions.NackError):
                channel.basic_publish(
                    OUTBOX_EXCHANGE,
                    big.username,
                    json.dumps({"to": small.username, "text": "refused"}).encode(),
                    props(big, reply_to=None),
                )
        finally:
            close_quietly(connection)


def test_a_full_relay_dead_makes_the_relay_drop_the_poison_and_count_it(
    pair: tuple[User, User], auth: AuthService, broker: Broker, relay: RelayProcess
):
    """relay.dead refuses what the relay publishes to it: counted, logged, acked once."""
    big, small = pair
    before = relay.fresh_counters()
    sessions = relay.wait_consuming().lifecycle.consuming_sessions
    dead = dead_letter_depth(broker)
    full = {"max-length": dead, "overflow": "reject-publish"}
    with policy(broker, "test-dead-full", r"^relay\.dead$", full):
        publish(broker, big, [(b"not json", props(big)) for _ in range(3)])
        eventually(
            lambda: relay.counters.dead_letter_refused >= before.dead_letter_refused + 3,
            timeout=30,
        )
        eventually(lambda: outbox_empty(broker))
        status = relay.fresh_counters()
        assert status.dead_letter_refused == before.dead_letter_refused + 3
        assert status.dead_lettered == before.dead_lettered
        assert dead_letter_depth(broker) == dead
    state = relay.status()
    assert state is not None and state.lifecycle.consuming_sessions == sessions
    assert "relay.dead refused a dead letter" in relay.log()
    probe(auth, big, small)
