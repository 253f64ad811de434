"""Direct messages through the real relay: online, offline, rejected, receipts."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from clients.library.errors import MessageRejected
from protocol.topology import VHOST, inbox_queue
from tests.integration.messaging_helpers import InboxReader, connect, read_inbox
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    eventually,
    signup_and_login,
)

pytestmark = pytest.mark.usefixtures("relay")


def test_message_reaches_an_online_recipient(auth: AuthService):
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    with InboxReader(auth, bob) as reader, connect(auth, alice) as sender:
        answer = sender.send(bob.username, "  hello bob  ", timeout=15)
        assert answer.status == "accepted"
        eventually(lambda: len(reader.received) == 1)
    [message] = reader.received
    assert (message.id, message.sender, message.to) == (answer.id, alice.username, bob.username)
    assert message.text == "hello bob"
    assert message.sent_at == answer.sent_at
    assert message.client_id == answer.client_id


def test_a_paced_send_many_delivers_each_message_before_the_next_is_produced(
    auth: AuthService,
):
    """send_many() writes publishes in batches; a source that waits (a person typing, a
    paced feed) must not leave its last message queued in the client until the next."""
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    with InboxReader(auth, bob) as reader, connect(auth, alice) as sender:

        def typed() -> Iterator[tuple[str, str]]:
            def arrived(count: int) -> Callable[[], bool]:
                return lambda: len(reader.received) == count

            for line in range(3):
                # The next line comes only once the previous one has arrived.
                eventually(arrived(line), timeout=10)
                yield bob.username, f"line {line}"

        answers = sender.send_many(typed(), timeout=15)
        eventually(lambda: len(reader.received) == 3)
    assert [a.status for a in answers] == ["accepted"] * 3
    assert [m.text for m in reader.received] == ["line 0", "line 1", "line 2"]


def test_message_waits_for_a_recipient_who_never_connected(auth: AuthService):
    alice, carol = signup_and_login(auth), signup_and_login(auth)
    with connect(auth, alice) as sender:
        ids = [
            sender.send(carol.username, f"while you were out {i}", timeout=15).id for i in range(3)
        ]
    received = read_inbox(auth, carol)
    assert [m.id for m in received] == ids
    assert [m.text for m in received] == [f"while you were out {i}" for i in range(3)]
    assert read_inbox(auth, carol, idle_timeout=0.5) == []  # acked: not delivered twice


def test_unknown_recipient_is_rejected_and_no_queue_is_created(auth: AuthService, broker: Broker):
    alice = signup_and_login(auth)
    ghost = f"ghost{uuid.uuid4().hex[:10]}"
    with connect(auth, alice) as sender, pytest.raises(MessageRejected) as rejected:
        sender.send(ghost, "anyone there?", timeout=15)
    assert rejected.value.reason == "unknown_recipient"
    assert ghost in str(rejected.value)
    assert inbox_queue(ghost) not in broker.queue_depths()


@pytest.mark.parametrize(
    ("to", "text", "detail"),
    [
        (None, "   ", "text must not be empty"),
        ("Not-A-Name", "hi", "username must be lowercase"),
        (None, "x" * 10_001, "at most 10000 characters"),
        (None, "ring\x07", "control character U+0007"),
    ],
)
def test_invalid_message_is_rejected_with_what_was_wrong(auth: AuthService, to, text, detail):
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    with connect(auth, alice) as sender, pytest.raises(MessageRejected) as rejected:
        sender.send(to or bob.username, text, timeout=15)
    assert rejected.value.reason == "invalid"
    assert detail in str(rejected.value)


def test_full_inbox_is_reported_to_the_sender(auth: AuthService, broker: Broker):
    alice, dave = signup_and_login(auth), signup_and_login(auth)
    policy = f"small-{dave.username}"
    broker.node.ctl(
        "set_policy", "-p", VHOST, "--apply-to", "queues", "--priority", "10",
        policy, f"^{inbox_queue(dave.username)}$",
        '{"max-length": 2, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        with connect(auth, alice) as sender:
            for i in range(2):
                sender.send(dave.username, f"fits {i}", timeout=15)
            with pytest.raises(MessageRejected) as rejected:
                sender.send(dave.username, "one too many", timeout=15)
        assert rejected.value.reason == "inbox_full"
        assert [m.text for m in read_inbox(auth, dave)] == ["fits 0", "fits 1"]
    finally:
        broker.node.ctl("clear_policy", "-p", VHOST, policy)


def test_delivery_receipt_reaches_the_original_sender(auth: AuthService):
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    with connect(auth, alice) as sender:
        answer = sender.send(bob.username, "did you get this?", timeout=15)
    with connect(auth, bob) as receiver:

        def receipt(message):  # the way a client stores, then confirms
            receiver.send_receipt(message.id, message.sender, "delivered")

        assert receiver.consume(receipt, idle_timeout=2) == 1
    with InboxReader(auth, alice) as reader:
        eventually(lambda: len(reader.receipts) == 1)
    [notice] = reader.receipts
    assert (notice.message_id, notice.reader, notice.status) == (
        answer.id,
        bob.username,
        "delivered",
    )
    assert reader.received == []


def test_sender_cannot_pose_as_someone_else(auth: AuthService, relay: RelayProcess):
    """The relay names the sender from the broker-checked user_id, never from the body."""
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    with connect(auth, alice) as sender:
        client_id = sender.publish(bob.username, "it's me, mallory")
        assert sender.collect([client_id], timeout=15)[client_id].status == "accepted"
    [message] = read_inbox(auth, bob)
    assert message.sender == alice.username
