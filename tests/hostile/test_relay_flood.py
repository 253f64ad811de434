"""One flooding account: the relay's per-sender and per-(sender, recipient) limits answer
the excess `rejected: rate_limited` (the library and the CLI say "slow down: ..."), nothing
of it reaches an inbox, and everybody else's messages keep flowing, in order, once each.

Before (issue 9): one user at 9.4k msg/s grew the outbox backlog to 40k, and others on the
same shard went from 3.7 ms to 4.2 s p90. The latency figure is `make bench`'s `flood`
scenario (timing is not asserted here).

These tests need a relay with limits (the suite's relay runs without, for the bulk tests):
the module stops the session's relay, runs its own with small limits, and starts the
session's relay again afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from clients.library.errors import MessageRejected
from protocol.topology import OUTBOX_EXCHANGE, REPLY_TO
from tests.hostile.relay_attack import outbox_empty, probe, props
from tests.integration.cli_driver import Person
from tests.integration.messaging_helpers import connect, read_inbox
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    close_quietly,
    eventually,
    signup_and_login,
    start_relay,
)

SENDER_RATE, SENDER_BURST = 2.0, 40
RECIPIENT_RATE, RECIPIENT_BURST = 1.0, 15
LIMITS = {
    "MESSENGER_RELAY_SENDER_RATE": str(SENDER_RATE),
    "MESSENGER_RELAY_SENDER_BURST": str(SENDER_BURST),
    "MESSENGER_RELAY_RECIPIENT_RATE": str(RECIPIENT_RATE),
    "MESSENGER_RELAY_RECIPIENT_BURST": str(RECIPIENT_BURST),
}


@pytest.fixture(scope="module")
def limited_relay(
    broker: Broker, relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    relay.stop()
    limited = start_relay(broker, tmp_path_factory.mktemp("limited-relay"), **LIMITS)
    try:
        yield limited
    finally:
        limited.stop()
        relay.start()
        relay.wait_consuming()


def flood(broker: Broker, sender: User, to: User, count: int) -> dict[str, list[str]]:
    """Publish `count` messages as fast as plain pika goes; the answers by status/reason
    (their detail), in order of arrival."""
    answers: dict[str, list[str]] = {}
    connection = broker.connect(sender.username, sender.token)
    try:
        channel = connection.channel()

        def on_answer(_ch: object, _m: object, _p: object, body: bytes) -> None:
            data = json.loads(body)
            answers.setdefault(data.get("reason") or data["status"], []).append(
                data.get("detail") or ""
            )

        channel.basic_consume(REPLY_TO, on_answer, auto_ack=True)
        for i in range(count):
            channel.basic_publish(
                OUTBOX_EXCHANGE,
                sender.username,
                json.dumps({"to": to.username, "text": f"flood {i}"}).encode(),
                props(sender, delivery_mode=pika.DeliveryMode.Transient),
            )

        def all_answered() -> bool:
            connection.process_data_events(time_limit=0.2)
            return sum(len(v) for v in answers.values()) >= count

        eventually(all_answered, timeout=60)
    finally:
        close_quietly(connection)
    return answers


def test_a_flood_is_answered_rate_limited_and_others_keep_flowing(
    auth: AuthService, broker: Broker, limited_relay: RelayProcess
):
    flooder, victim = signup_and_login(auth, "flood"), signup_and_login(auth, "victim")
    alice, bob = signup_and_login(auth, "alice"), signup_and_login(auth, "bob")
    before = limited_relay.fresh_counters()
    count = 600

    answers = flood(broker, flooder, victim, count)

    accepted = len(answers.get("accepted", []))
    limited = len(answers.get("rate_limited", []))
    assert accepted + limited == count, answers.keys()
    # At most the pair's burst and what refilled while the flood lasted (a few seconds).
    assert RECIPIENT_BURST <= accepted <= RECIPIENT_BURST + 30
    assert "more than" in answers["rate_limited"][0]
    counters = limited_relay.fresh_counters()
    assert counters.rate_limited - before.rate_limited == limited
    assert counters.relayed - before.relayed == accepted
    eventually(lambda: outbox_empty(broker))
    # Only the accepted ones reached the victim: the flood did not fill the inbox.
    texts = [m.text for m in read_inbox(auth, victim)]
    assert len(texts) == accepted and texts == sorted(texts, key=lambda t: int(t.split()[1]))

    probe(auth, alice, bob)  # others: in order, once each, answered
    probe(auth, bob, alice)
    status = limited_relay.status()
    assert status is not None and status.lifecycle.consuming_sessions == 1


def test_the_library_and_the_cli_say_slow_down_in_one_line(
    auth: AuthService, broker: Broker, limited_relay: RelayProcess, tmp_path: Path
):
    """The per-recipient guard: a sender within its own budget still cannot pour more than
    the pair's burst into one inbox; other recipients are not affected."""
    writer = Person.signed_up(tmp_path, auth, "writer", "Writer")
    writer.login()
    reader, other = signup_and_login(auth, "reader"), signup_and_login(auth, "other")
    writer_user = User(writer.username, writer.password, "Writer", writer.password)
    refused: MessageRejected | None = None
    with connect(auth, writer_user) as connection:
        for i in range(RECIPIENT_BURST + 10):
            try:
                connection.send(reader.username, f"note {i}", timeout=30)
            except MessageRejected as exc:
                refused = exc
                break
        assert refused is not None, "the pair's burst was not enforced"
        assert refused.reason == "rate_limited"
        assert str(refused).startswith("slow down: ")
        assert reader.username in str(refused)
        # Another recipient: the sender's own budget is not spent.
        assert connection.send(other.username, "hello other", timeout=30).status == "accepted"

    result = writer.run("send", reader.username, "one more")
    assert result.code == 1
    line = result.error_line()
    assert "slow down: " in line and "nothing was sent" in line, line

    time.sleep(1.5 / RECIPIENT_RATE)  # the bucket refills: the writer may go on
    writer.ok("send", reader.username, "after a pause")
    texts = [m.text for m in read_inbox(auth, reader)]
    assert texts[-1] == "after a pause"
    assert "one more" not in texts
