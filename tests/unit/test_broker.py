"""The shared AMQP plumbing: backoff, error classification, reply-to addresses, pika's internals."""

import pika
import pika.exceptions

from broker.backoff import Backoff, backoff_delay
from broker.errors import Failure, classify, describe, queue_missing, retryable
from broker.params import connection_parameters
from broker.pika_io import coalesce_pika_writes, missing_internals, writes_coalesced
from broker.reply_to import answerable, reply_to_node

REPLY = "amq.rabbitmq.reply-to.abc"
# A direct reply-to address as RabbitMQ 3.10.8 wrote it: the pid's node is "reply@17702804".
NODE_REPLY = (
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxNzcwMjgwNAAABdYAAAAAawb6dA==./gxSazk8/ZvrOdpRosZL+A=="
)
DOWN = "NOT_FOUND - home node 'rabbit@b' of durable queue 'inbox.a' is down or inaccessible"


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(maximum=3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert [backoff_delay(n, maximum=10.0, first=1.0) for n in (1, 2, 5)] == [1.0, 2.0, 10.0]


def test_a_lost_connection_or_a_down_queue_is_retried_but_a_refusal_is_not():
    assert retryable(pika.exceptions.StreamLostError("Transport indicated EOF"))
    assert retryable(pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED"))
    assert retryable(pika.exceptions.ChannelWrongStateError("Channel is closed."))
    assert retryable(pika.exceptions.ChannelClosedByBroker(404, DOWN))
    assert not retryable(pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue"))
    assert not retryable(pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED"))
    assert not retryable(pika.exceptions.ProbableAuthenticationError("bad login"))
    assert not retryable(ValueError("not a broker error"))


def test_failures_are_told_apart_by_class_and_reply_code():
    assert classify(pika.exceptions.ProbableAccessDeniedError("vhost")) is Failure.LOGIN_REFUSED
    for code in (403, 406, 530):
        assert classify(pika.exceptions.ChannelClosedByBroker(code, "x")) is Failure.REFUSED
    assert classify(pika.exceptions.ChannelClosedByBroker(404, "no queue")) is Failure.MISSING
    assert queue_missing(404, "NOT_FOUND - no queue 'inbox.c'")
    assert not queue_missing(404, DOWN) and not queue_missing(541, "INTERNAL_ERROR")


def test_a_wrapped_socket_error_is_described_by_its_cause():
    cause = ConnectionRefusedError(111, "Connection refused")
    wrapped = pika.exceptions.AMQPConnectionError(cause)
    assert "Connection refused" in describe(wrapped)
    assert describe("plain text") == "plain text"


def test_only_a_direct_reply_to_address_is_answered():
    assert answerable(NODE_REPLY) and answerable(REPLY)
    for other in (None, "", "inbox.bob", "amq.rabbitmq.reply-to", REPLY + "x" * 600):
        assert not answerable(other)


def test_the_node_is_read_from_a_direct_reply_to_address():
    assert reply_to_node(NODE_REPLY) == "reply@17702804"
    for other in (None, "", "inbox.bob", REPLY, "amq.rabbitmq.reply-to.!!!.x"):
        assert reply_to_node(other) is None


def test_connection_parameters_carry_the_login_and_the_options_given():
    params = connection_parameters(
        ("h", 5673), vhost="v", username="u", password="p", name="n", heartbeat=30
    )
    assert (params.host, params.port, params.virtual_host) == ("h", 5673, "v")
    assert params.credentials == pika.PlainCredentials("u", "p")
    assert params.heartbeat == 30 and params.connection_attempts == 1
    assert params.client_properties == {"connection_name": "n"}


def test_the_pinned_pika_still_has_the_internals_pika_io_uses():
    """A pika upgrade that moves them fails here, not silently in production. (The test
    session patches pika as the entry points do: tests/conftest.py.)"""
    assert missing_internals() == []
    assert writes_coalesced()
    assert coalesce_pika_writes()  # idempotent
    assert writes_coalesced()
