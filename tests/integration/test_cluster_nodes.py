"""A three-node cluster of private RabbitMQ nodes: it forms, and loses one node by SIGKILL.

One cluster for the module (deploy/local_cluster.py). Each test signs a user up through an
auth service of its own (the inbox queue type is the auth service's setting), fills the
user's inbox as the `relay` account, kills the node that holds the inbox, and reads the inbox
as the user from a node that is still up. Relay and client failover across nodes are tested
in test_cluster_failover.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest

from deploy.local_broker import free_port, service_passwords
from deploy.local_cluster import ClusterNode, LocalCluster, running_cluster
from protocol.topology import OUTBOX_QUEUES, inbox_queue
from tests.integration.stack import (
    TEST_AUTH_CACHE_TTL_MS,
    AuthService,
    Broker,
    User,
    close_quietly,
    deliver_as_relay,
    eventually,
    signup_and_login,
    start_auth,
)

pytestmark = pytest.mark.slow

MESSAGES = 50
FAILOVER_TIMEOUT = 45.0  # a quorum queue elects a new leader within seconds; slack for CI


def running_test_cluster() -> Iterator[LocalCluster]:
    """A started cluster for a test module, removed with its data at the end.

    Its data lives in a fresh directory under /tmp: pytest's tmp dirs are closed to the
    `rabbitmq` user the nodes run as.
    """
    with running_cluster(
        auth_url=f"http://127.0.0.1:{free_port()}",
        service_passwords=service_passwords(),
        auth_cache_ttl_ms=TEST_AUTH_CACHE_TTL_MS,
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    yield from running_test_cluster()


@pytest.fixture
def whole_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The cluster with all three nodes running, before and after the test."""
    for index, node in enumerate(cluster.nodes):
        if not node.running:
            cluster.start_node(index)
    yield cluster
    for index, node in enumerate(cluster.nodes):
        if not node.running:
            cluster.start_node(index)


def first_node_broker(cluster: LocalCluster) -> Broker:
    """The cluster as tests/integration/stack.py's helpers see a broker: its first node."""
    auth_api_port = urlsplit(cluster.auth_url).port
    assert auth_api_port is not None
    return Broker(node=cluster.nodes[0], auth_api_port=auth_api_port)


def auth_on(cluster: LocalCluster, workdir: Path, queue_type: str, **env: str) -> AuthService:
    """An auth service that declares inboxes of `queue_type` (through the first node)."""
    return start_auth(
        first_node_broker(cluster), workdir, MESSENGER_AUTH_INBOX_QUEUE_TYPE=queue_type, **env
    )


def read_all(node: ClusterNode, user: User) -> list[bytes]:
    """Everything waiting in the user's inbox, read and acked as the user through `node`."""
    connection = pika.BlockingConnection(node.connection_parameters(user.username, user.token))
    try:
        channel = connection.channel()
        bodies: list[bytes] = []
        while True:
            method, _, body = channel.basic_get(inbox_queue(user.username))
            if method is None:
                return bodies
            bodies.append(body)
            channel.basic_ack(method.delivery_tag)
    finally:
        close_quietly(connection)


def node_named(cluster: LocalCluster, name: str) -> int:
    return cluster.node_names.index(name)


def bodies(prefix: str) -> list[bytes]:
    return [f"{prefix} {i} {uuid.uuid4().hex}".encode() for i in range(MESSAGES)]


def test_three_nodes_form_one_cluster_with_quorum_outbox_shards_on_every_node(
    whole_cluster: LocalCluster,
) -> None:
    cluster = whole_cluster
    assert cluster.cluster_running_nodes() == set(cluster.node_names)
    queues = cluster.queue_members()
    for name in (*OUTBOX_QUEUES, "relay.dead"):
        queue_type, members, _ = queues[name]
        assert queue_type == "quorum", name
        assert members == set(cluster.node_names), name
    for node in cluster.nodes:  # every node accepts the service accounts' logins
        pika.BlockingConnection(
            node.connection_parameters("relay", node.service_passwords["relay"])
        ).close()


def test_quorum_inbox_survives_sigkill_of_its_leader_and_is_read_from_another_node(
    whole_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = whole_cluster
    auth = auth_on(cluster, tmp_path, "quorum")
    try:
        bob = signup_and_login(auth, prefix="q")
        queue_type, members, leader = cluster.queue_members()[inbox_queue(bob.username)]
        assert queue_type == "quorum" and members == set(cluster.node_names)
        killed = node_named(cluster, leader)
        sent = bodies("quorum")
        deliver_as_relay(cluster.nodes[killed], bob.username, *sent)  # confirmed by the leader

        cluster.kill(killed)
        survivor = next(node for node in cluster.nodes if node.running)
        received: list[bytes] = []

        def drained() -> bool:
            try:
                received.extend(read_all(survivor, bob))
            except pika.exceptions.AMQPError:  # no leader elected yet
                return False
            return len(received) >= len(sent)

        eventually(drained, timeout=FAILOVER_TIMEOUT, interval=0.5)
        assert not cluster.nodes[killed].running  # read while the leader's node is still down
        assert sorted(received) == sorted(sent)
        _, _, new_leader = cluster.queue_members()[inbox_queue(bob.username)]
        assert new_leader != leader

        cluster.start_node(killed)  # rejoins, and its replica catches up
        assert cluster.cluster_running_nodes() == set(cluster.node_names)
        _, members_after, _ = cluster.queue_members()[inbox_queue(bob.username)]
        assert members_after == set(cluster.node_names)
        assert read_all(cluster.nodes[killed], bob) == []  # acked once, not delivered again
    finally:
        auth.stop()


def test_classic_inbox_on_a_killed_node_is_unavailable_until_it_returns_then_nothing_is_lost(
    whole_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = whole_cluster
    auth = auth_on(cluster, tmp_path, "classic")
    try:
        carol = signup_and_login(auth, prefix="c")
        queue_type, _, home = cluster.queue_members()[inbox_queue(carol.username)]
        assert queue_type == "classic"
        killed = node_named(cluster, home)
        survivor = cluster.nodes[(killed + 1) % len(cluster.nodes)]
        sent = bodies("classic")
        deliver_as_relay(survivor, carol.username, *sent)  # routed to the queue's home node

        cluster.kill(killed)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            read_all(survivor, carol)
        assert refused.value.reply_code == 404  # "home node ... is down or inaccessible"
        # A new message for her is not routable while her inbox is down: the relay's
        # mandatory publish comes back, so a sender is told rather than the message lost.
        with pytest.raises(pika.exceptions.UnroutableError):
            deliver_as_relay(survivor, carol.username, b"while her node is down")

        cluster.start_node(killed)
        received = eventually(lambda: read_all(survivor, carol), timeout=FAILOVER_TIMEOUT)
        assert sorted(received) == sorted(sent)
    finally:
        auth.stop()
