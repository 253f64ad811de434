"""Failover on a three-node cluster: the relays, the auth service and the clients are given
every node and move to the next one when theirs is SIGKILLed.

- 1,000 messages from 5 senders to 5 recipients (quorum inboxes); one node is killed while
  they flow; every message arrives, and is shown once, while the node is still down; then
  the node rejoins.
- Classic inboxes: a message for an inbox whose node is down is neither lost nor answered
  `unknown_recipient`; the relay holds it and delivers it once the node is back, while a
  message for a user who does not exist is still answered `unknown_recipient`.

Settings used: `MESSENGER_RELAY_AMQP_NODES`, `MESSENGER_AUTH_AMQP_NODES` (`host:port,...`),
`MESSENGER_AUTH_PUBLIC_AMQP_URLS` (announced by `GET /v1/meta` as `amqp_urls`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.library.errors import MessageRejected, NotConfirmed
from deploy.local_cluster import LocalCluster
from protocol.topology import inbox_queue
from tests.integration.messaging_helpers import (
    FAST_RELAY,
    BackgroundSender,
    InboxReader,
    connect,
)
from tests.integration.stack import (
    AuthService,
    RelayProcess,
    User,
    cluster_auth_env,
    cluster_relay_env,
    eventually,
    node_list,
    signup_and_login,
    start_relay,
)
from tests.integration.test_cluster_nodes import (
    auth_on,
    first_node_broker,
    node_named,
    running_test_cluster,
)

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

SENDERS = RECIPIENTS = 5
TOTAL = 1_000
KILL_AFTER = 250  # messages received before the node is killed
ARRIVAL_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    yield from running_test_cluster()


def failover_auth(
    cluster: LocalCluster, workdir: Path, queue_type: str, *, declare_on_last: bool = False
) -> AuthService:
    """An auth service given every node, announcing every node to clients. With
    `declare_on_last` it tries the nodes last first: classic inboxes live on the node that
    declared them (RabbitMQ 3.10 places classic queues client-local)."""
    env = cluster_auth_env(cluster.nodes)
    if declare_on_last:
        env["MESSENGER_AUTH_AMQP_NODES"] = node_list(cluster.nodes[::-1])
    return auth_on(cluster, workdir, queue_type, **env)


def failover_relay(cluster: LocalCluster, workdir: Path) -> RelayProcess:
    env = {**cluster_relay_env(cluster.nodes), **FAST_RELAY}
    return start_relay(first_node_broker(cluster), workdir, **env)


def test_messages_keep_flowing_when_a_node_is_killed_and_each_arrives_once(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    auth = failover_auth(cluster, tmp_path, "quorum")
    relays: list[RelayProcess] = []
    readers: list[InboxReader] = []
    try:
        for _ in range(2):
            relays.append(failover_relay(cluster, tmp_path))
        senders = [signup_and_login(auth, prefix="s") for _ in range(SENDERS)]
        recipients = [signup_and_login(auth, prefix="r") for _ in range(RECIPIENTS)]
        readers = [InboxReader(auth, user).start() for user in recipients]

        received = threading.Semaphore(0)
        arrivals: list[float] = []  # when each message (redeliveries too) was handled

        def arrived(_message: object) -> None:
            arrivals.append(time.monotonic())
            received.release()

        for reader in readers:
            reader.on_message = arrived
        per_sender = TOTAL // SENDERS
        background = [
            BackgroundSender(
                auth,
                sender,
                [
                    (recipients[i % RECIPIENTS].username, f"{sender.username} #{i}")
                    for i in range(per_sender)
                ],
                window=50,
                timeout=ARRIVAL_TIMEOUT,
            ).start()
            for sender in senders
        ]

        for _ in range(KILL_AFTER):
            assert received.acquire(timeout=60), "messages stopped flowing before the kill"
        killed = 0  # the node every service and client tried first
        cluster.kill(killed)
        killed_at = time.monotonic()

        for sender in background:
            sender.join(ARRIVAL_TIMEOUT)

        def all_arrived() -> bool:
            texts = set().union(*(reader.unique_texts() for reader in readers))
            return len(texts) == TOTAL

        eventually(all_arrived, timeout=ARRIVAL_TIMEOUT, interval=0.5)
        assert not cluster.nodes[killed].running, "arrived only after the node came back"
        elapsed = time.monotonic() - killed_at
        handled = sum(len(reader.received) for reader in readers)
        after = [killed_at, *sorted(t for t in arrivals if t > killed_at)]
        pause = max(b - a for a, b in itertools.pairwise(after))
        logger.info(  # measured, not asserted: docs/deployment.md quotes it
            "node killed after %d of %d arrived; longest pause in arrivals after the kill "
            "%.1f s; all arrived %.1f s after the kill; %d deliveries (%d redelivered)",
            KILL_AFTER, TOTAL, pause, elapsed, handled, handled - TOTAL,
        )  # fmt: skip
        for reader in readers:
            # a redelivery (after a failover) carries the same server id: history shows it once
            by_client_id: dict[tuple[str, str | None], set[str]] = {}
            for message in reader.received:
                by_client_id.setdefault((message.sender, message.client_id), set()).add(message.id)
            assert all(len(ids) == 1 for ids in by_client_id.values()), reader.user.username
            assert len(by_client_id) == TOTAL // RECIPIENTS
        assert all(relay.alive for relay in relays)
        assert all(reader.error is None for reader in readers)
        assert elapsed < ARRIVAL_TIMEOUT

        cluster.start_node(killed)
        assert cluster.cluster_running_nodes() == set(cluster.node_names)
        # The relays dropped answers to the dead node's clients only while it was down: a
        # sender on the node that came back (the first in `amqp_urls`) is answered again.
        with connect(auth, senders[0]) as connection:
            connection.send(recipients[0].username, "after the rejoin", timeout=30)
    finally:
        for reader in readers:
            with contextlib.suppress(Exception):  # its error, if any, was asserted above
                reader.stop()
        for relay in relays:
            relay.stop()
        auth.stop()
        if not cluster.nodes[0].running:
            cluster.start_node(0)


def user_with_inbox_away_from_the_first_node(cluster: LocalCluster, auth: AuthService) -> User:
    """A user whose classic inbox lives on node 2 or 3, so killing its node leaves the
    relay's and the sender's node (the first) running."""
    for _ in range(12):
        user = signup_and_login(auth, prefix="c")
        _, _, home = cluster.queue_members()[inbox_queue(user.username)]
        if node_named(cluster, home) != 0:
            return user
    raise AssertionError("every inbox was placed on the first node")


def test_a_message_for_a_classic_inbox_on_a_dead_node_waits_and_is_not_rejected(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    auth = failover_auth(cluster, tmp_path, "classic", declare_on_last=True)
    relay = failover_relay(cluster, tmp_path)
    killed = None
    try:
        alice = signup_and_login(auth, prefix="a")
        carol = user_with_inbox_away_from_the_first_node(cluster, auth)
        _, _, home = cluster.queue_members()[inbox_queue(carol.username)]
        killed = node_named(cluster, home)
        with connect(auth, alice) as sender:
            before = sender.send(carol.username, "before", timeout=30)
            cluster.kill(killed)
            # Returned as unroutable by the broker, but her inbox exists: held, not rejected.
            with pytest.raises(NotConfirmed):
                sender.send(carol.username, "while her node is down", timeout=5)
            with pytest.raises(MessageRejected) as unknown:  # a missing inbox still is
                sender.send("nobody-" + carol.username[1:], "anyone?", timeout=15)
            assert unknown.value.reason == "unknown_recipient"

        cluster.start_node(killed)
        with InboxReader(auth, carol) as reader:
            eventually(lambda: len(reader.unique_texts()) == 2, timeout=45, interval=0.2)
        assert reader.unique_texts() == {"before", "while her node is down"}
        assert before.id in {m.id for m in reader.received}
        assert len({m.id for m in reader.received}) == 2
        assert relay.alive
    finally:
        relay.stop()
        auth.stop()
        if killed is not None and not cluster.nodes[killed].running:
            cluster.start_node(killed)
