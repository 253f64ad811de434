"""Break things on purpose: kill relays and clients, restart the broker; nothing is lost and,
after the client's dedup by id, nothing is shown twice.

These tests own their broker, auth service and relays (module scope), because they stop and
kill them. Users are signed up before anything is broken.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.topology import OUTBOX_QUEUES, inbox_queue
from tests.integration.messaging_helpers import (
    FAST_RELAY,
    BackgroundSender,
    InboxReader,
    connect,
    meta_of,
    read_inbox,
)
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    eventually,
    launch_relay,
    signup_and_login,
    start_auth,
    start_broker,
    start_relay,
)

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    broker: Broker
    auth: AuthService
    workdir: Path
    users: list[User]
    relays: list[RelayProcess]

    def user(self) -> User:
        return self.users.pop()

    def relay(self) -> RelayProcess:
        """A relay that consumes the outbox (its status file says so)."""
        process = start_relay(self.broker, self.workdir, **FAST_RELAY)
        self.relays.append(process)
        return process


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("reliability")
    broker = start_broker()
    auth: AuthService | None = None
    relays: list[RelayProcess] = []
    try:
        auth = start_auth(broker, workdir)
        users = [signup_and_login(auth) for _ in range(16)]
        yield Stack(broker, auth, workdir, users, relays)
    finally:
        for process in relays:
            process.kill()
        if auth is not None:
            auth.stop()
        broker.kill()  # its data is thrown away: no need for an orderly stop
        broker.remove()


@pytest.fixture(autouse=True)
def _no_relay_left_over(stack: Stack) -> Iterator[None]:
    yield
    for process in stack.relays:
        process.stop()
    stack.relays.clear()


def relayed_total(relay: RelayProcess) -> int:
    """What a stopped relay relayed, from its last status."""
    status = relay.status()
    assert status is not None and status.lifecycle.state == "stopped", relay.log()
    return status.counters.relayed


def test_relay_killed_mid_stream_loses_nothing_and_duplicates_share_an_id(
    stack: Stack, record_property: Callable[[str, object], None]
):
    alice, bob = stack.user(), stack.user()
    total = 1000
    first = stack.relay()
    with InboxReader(stack.auth, bob) as reader:
        sender = BackgroundSender(
            stack.auth, alice, [(bob.username, f"n{i}") for i in range(total)], window=200
        ).start()
        eventually(lambda: reader.received, timeout=60, interval=0.001)
        started, at_start = time.monotonic(), len(reader.received)
        eventually(lambda: len(reader.received) >= 300, timeout=60, interval=0.001)
        first.kill()  # SIGKILL mid-stream: no last acks, no last answers
        killed_at = time.monotonic()
        moved_by_first = len({m.id for m in reader.received})
        second = stack.relay()
        answers = sender.join()
        eventually(lambda: len(reader.unique_texts()) == total, timeout=60)
        # Let every duplicate arrive: all sent, and nothing left in the inbox or outbox.
        eventually(
            lambda: all(v == 0 for k, v in stack.broker.queue_depths().items()
                        if k in (*OUTBOX_QUEUES, inbox_queue(bob.username))),
            timeout=30,
        )  # fmt: skip
    assert {a.status for a in answers} == {"accepted"}
    by_text: dict[str, set[str]] = {}
    for message in reader.received:
        by_text.setdefault(message.text, set()).add(message.id)
    assert sorted(by_text) == sorted(f"n{i}" for i in range(total))
    assert all(len(ids) == 1 for ids in by_text.values()), "a redelivery got a new id"
    assert {a.id for a in answers} == {m.id for m in reader.received}
    shown: dict[str, str] = {}  # the client's dedup: the first copy of each id is shown
    for message in reader.received:
        shown.setdefault(message.id, message.text)
    assert list(shown.values()) == [f"n{i}" for i in range(total)], "order broke in failover"

    second.stop()
    redeliveries = len(reader.received) - total
    rate = (moved_by_first - at_start) / max(killed_at - started, 1e-6)
    assert relayed_total(second) > 0, "the kill came after the first relay had finished"
    record_property("relay_kill_messages_per_second", round(rate))
    record_property("relay_kill_raw_redeliveries", redeliveries)
    logger.warning(
        "relay kill test: the first relay moved %d messages (%.0f msg/s end to end, from the "
        "first arrival to SIGKILL); the second relayed %d; %d raw redeliveries of %d "
        "messages, all deduplicated by id",
        moved_by_first, rate, relayed_total(second), redeliveries, total,
    )  # fmt: skip


def test_relay_stopped_with_sigterm_finishes_what_is_in_flight(stack: Stack):
    alice, bob = stack.user(), stack.user()
    total = 600
    first = stack.relay()
    with InboxReader(stack.auth, bob) as reader:
        sender = BackgroundSender(
            stack.auth, alice, [(bob.username, f"t{i}") for i in range(total)], window=200
        ).start()
        eventually(lambda: len(reader.received) >= 150, timeout=60, interval=0.001)
        assert first.stop() == 0  # SIGTERM: stop consuming, settle in-flight, close
        stack.relay()
        answers = sender.join()
        eventually(lambda: len(reader.unique_texts()) == total, timeout=60)
        eventually(lambda: stack.broker.queue_depths()[inbox_queue(bob.username)] == 0)
    assert {a.status for a in answers} == {"accepted"}
    stopped = first.status()
    assert stopped is not None and stopped.lifecycle.stop is not None
    assert stopped.lifecycle.stop.graceful  # stopped consuming, finished what was in flight
    assert stopped.lifecycle.stop.unconfirmed == 0  # nothing left for the broker to redeliver
    assert len(reader.received) == total, "a message in flight at SIGTERM was relayed twice"
    assert [m.text for m in reader.received] == [f"t{i}" for i in range(total)]


RECEIVER = """
import sys, time
from clients.library.messaging import MessengerConnection
from protocol.accounts import Meta

meta, username, token, history = Meta.model_validate_json(sys.argv[1]), *sys.argv[2:5]

def store_then_hang(message):
    with open(history, "a") as f:  # stored (and shown) but never acked: then SIGKILL
        f.write(message.id + "\\n")
    time.sleep(3600)

MessengerConnection.open(meta, username, token).consume(store_then_hang)
"""


def test_receiving_client_killed_before_acking_gets_the_messages_again(
    stack: Stack, tmp_path: Path
):
    alice, bob = stack.user(), stack.user()
    stack.relay()
    with connect(stack.auth, alice) as sender:
        sent = [sender.send(bob.username, f"m{i}", timeout=15).id for i in range(5)]

    history = tmp_path / "history"
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, meta_of(stack.auth).model_dump_json(), bob.username,
         bob.token, str(history)],
        cwd=ROOT,
    )  # fmt: skip
    try:
        eventually(lambda: history.exists() and history.read_text().strip(), timeout=30)
    finally:
        receiver.kill()
        receiver.wait(10)
    stored = set(history.read_text().split())
    assert stored == {sent[0]}

    shown: list[str] = []
    again = read_inbox(stack.auth, bob)
    for message in again:  # the client's dedup: show what the history does not hold yet
        if message.id not in stored:
            stored.add(message.id)
            shown.append(message.id)
    assert [m.id for m in again] == sent  # all five came again, the stored one included
    assert shown == sent[1:]  # and none is shown twice


def test_two_relay_replicas_keep_one_senders_order(stack: Stack):
    alice, bob, carol = stack.user(), stack.user(), stack.user()
    relays = [stack.relay(), stack.relay()]
    total = 1000
    with InboxReader(stack.auth, bob) as reader:
        other = BackgroundSender(
            stack.auth, carol, [(bob.username, f"c{i}") for i in range(300)]
        ).start()
        with connect(stack.auth, alice) as sender:
            answers = sender.send_many([(bob.username, f"{i}") for i in range(total)])
        other.join()
        eventually(lambda: len(reader.received) == total + 300, timeout=60)
    assert {a.status for a in answers} == {"accepted"}
    from_alice = [int(m.text) for m in reader.received if m.sender == alice.username]
    assert from_alice == list(range(total))
    from_carol = [m.text for m in reader.received if m.sender == carol.username]
    assert from_carol == [f"c{i}" for i in range(300)]
    assert all(r.alive for r in relays)


def test_broker_restart_keeps_offline_inbox_and_outbox(stack: Stack):
    alice, bob = stack.user(), stack.user()
    relay = stack.relay()
    with connect(stack.auth, alice) as sender:
        answers = sender.send_many([(bob.username, f"inbox {i}") for i in range(500)])
        assert {a.status for a in answers} == {"accepted"}
        relay.stop()
        for i in range(100):  # no relay: these wait in relay.outbox
            sender.publish(bob.username, f"outbox {i}")
        eventually(lambda: sum(stack.broker.queue_depths()[q] for q in OUTBOX_QUEUES) == 100)
    assert stack.broker.queue_depths()[inbox_queue(bob.username)] == 500

    stack.broker.restart()

    stack.relay()
    received = read_inbox(stack.auth, bob)
    texts = [m.text for m in received]
    assert len(set(texts)) == 600
    assert texts[:500] == [f"inbox {i}" for i in range(500)]
    assert sorted(texts[500:]) == sorted(f"outbox {i}" for i in range(100))


def test_relay_started_before_the_broker_and_broker_restarted_under_it(stack: Stack):
    alice, bob = stack.user(), stack.user()
    stack.broker.kill()
    relay = launch_relay(stack.broker, stack.workdir, **FAST_RELAY)
    stack.relays.append(relay)

    def unreachable() -> bool:
        status = relay.status()
        return status is not None and status.lifecycle.unreachable > 0

    eventually(unreachable, timeout=30)  # it tried, found no broker, and keeps trying
    stack.broker.start()
    relay.wait_consuming()

    with connect(stack.auth, alice) as sender:
        before = sender.send_many([(bob.username, f"before {i}") for i in range(100)])
    stack.broker.restart()  # under the running relay
    relay.wait_consuming(sessions=2)
    with connect(stack.auth, alice) as sender:
        after = sender.send_many([(bob.username, f"after {i}") for i in range(100)])

    assert {a.status for a in before + after} == {"accepted"}
    texts = {m.text for m in read_inbox(stack.auth, bob)}
    assert texts == {f"before {i}" for i in range(100)} | {f"after {i}" for i in range(100)}
    assert relay.alive
    status = relay.status()
    assert status is not None and status.lifecycle.reconnects >= 2
    assert relay.stop() == 0
    logger.info("relay log:\n%s", relay.log())
