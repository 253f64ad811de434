"""Three private RabbitMQ nodes from the installed `rabbitmq-server`, joined into one cluster.

Each node is a `LocalNode` (own name, ports, data directory) with two differences, both
applied when its files are written:

- definitions.json is the same file with every queue quorum instead of classic
  (`render_definitions.with_queue_type`): the outbox shards and `relay.dead` get a replica on
  every node, keep single-active-consumer and dead-lettering, and survive the loss of one node;
- rabbitmq.conf names the three nodes for `classic_config` peer discovery, so a fresh node
  joins the cluster at its first boot (no stop_app / join_cluster / start_app round).

The first fresh node boots alone and forms the cluster; the other two then boot together and
join it. A cluster that has run before boots all three nodes at once (each waits for its
peers' tables). Quorum queues declared while one node was alone are then grown to all three
(`rabbitmq-queues grow`). All nodes share the `rabbitmq` user's Erlang cookie.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deploy.compose.render_definitions import with_queue_type
from deploy.local_broker import START_TIMEOUT, BrokerError, LocalNode, free_port
from protocol.topology import VHOST

logger = logging.getLogger(__name__)

CLUSTER_SIZE = 3


@dataclass
class ClusterNode(LocalNode):
    """A LocalNode whose definitions carry `queue_type` queues and whose config names peers."""

    queue_type: str = "quorum"

    def _write_files(self) -> None:
        super()._write_files()
        path = self.data_dir / "definitions.json"  # rewritten in place: owner and mode stay
        path.write_text(json.dumps(with_queue_type(json.loads(path.read_text()), self.queue_type)))

    def queues(self, *args: str, timeout: float = 120) -> str:
        """Run `rabbitmq-queues` against this node, as `ctl()` runs rabbitmqctl."""
        return self.run_cli("rabbitmq-queues", *args, timeout=timeout)

    @property
    def fresh(self) -> bool:
        """Never booted: it has no database yet, so it will join the cluster at boot."""
        mnesia = self.data_dir / "mnesia"
        return not mnesia.is_dir() or not any(mnesia.iterdir())


def peer_discovery_config(node_names: Sequence[str]) -> str:
    """rabbitmq.conf lines that make a fresh node join the cluster of `node_names`."""
    lines = ["cluster_formation.peer_discovery_backend = classic_config"]
    lines += [
        f"cluster_formation.classic_config.nodes.{i} = {n}" for i, n in enumerate(node_names, 1)
    ]
    return "\n".join(lines)


@dataclass
class LocalCluster:
    """Three ClusterNodes; `start()` returns once all three run as one cluster."""

    auth_url: str
    service_passwords: dict[str, str]
    auth_cache_ttl_ms: int = 5_000
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="messenger-rmq-")))
    name_prefix: str = field(default_factory=lambda: f"messenger-{secrets.token_hex(3)}")
    amqp_ports: Sequence[int] = ()  # empty: free ports
    dist_ports: Sequence[int] = ()  # Erlang distribution; empty: free ports
    host: str = "127.0.0.1"
    queue_type: str = "quorum"
    nodes: list[ClusterNode] = field(init=False)

    def __post_init__(self) -> None:
        names = [f"{self.name_prefix}-{i}@localhost" for i in range(1, CLUSTER_SIZE + 1)]
        ports = list(self.amqp_ports) or [free_port() for _ in names]
        dist_ports = list(self.dist_ports) or [free_port() for _ in names]
        if len(ports) != CLUSTER_SIZE or len(dist_ports) != CLUSTER_SIZE:
            raise BrokerError(f"a cluster needs {CLUSTER_SIZE} AMQP and distribution ports")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)  # the `rabbitmq` user reaches its node directories through it
        self.nodes = [
            ClusterNode(
                auth_url=self.auth_url,
                service_passwords=self.service_passwords,
                auth_cache_ttl_ms=self.auth_cache_ttl_ms,
                data_dir=self.base_dir / f"node-{i}",
                amqp_port=port,
                dist_port=dist_port,
                name=name,
                host=self.host,
                extra_config=peer_discovery_config(names),
                queue_type=self.queue_type,
            )
            for i, (name, port, dist_port) in enumerate(
                zip(names, ports, dist_ports, strict=True), 1
            )
        ]
        for node in self.nodes:
            node.data_dir.mkdir(exist_ok=True)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Boot the three nodes (forming the cluster on first use); stop them all on failure."""
        logger.info("starting a %d-node RabbitMQ cluster in %s", CLUSTER_SIZE, self.base_dir)
        try:
            first, rest = self.nodes[0], self.nodes[1:]
            if first.fresh:  # it forms the cluster alone; the others find it running and join
                first.start(timeout)
                _each(rest, lambda node: node.start(timeout))
            else:
                _each(self.nodes, lambda node: node.start(timeout))
            self.wait_until_clustered(timeout)
            self.grow_quorum_queues()
        except BaseException:
            self.stop()
            raise
        logger.info("RabbitMQ cluster ready: %s", ", ".join(n.public_amqp_url for n in self.nodes))

    def stop(self) -> None:
        """Stop every node cleanly (rabbitmqctl stop), all at once. Idempotent."""
        _each(self.nodes, lambda node: node.stop())

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def kill(self, index: int) -> ClusterNode:
        """SIGKILL one node's Erlang VM; the others carry on."""
        node = self.nodes[index]
        node.kill()
        return node

    def start_node(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Boot one node again (after kill or stop): it rejoins from its own database."""
        self.nodes[index].start(timeout)
        self.wait_until_clustered(timeout)

    # -- state -----------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def running_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def any_running(self) -> ClusterNode:
        for node in self.nodes:
            if node.running:
                return node
        raise BrokerError("no node of the cluster is running")

    def cluster_running_nodes(self) -> set[str]:
        """The nodes a running member sees as running members of its cluster."""
        status = json.loads(self.any_running().ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def wait_until_clustered(self, timeout: float = START_TIMEOUT) -> None:
        """Until every node we started is a running member of one cluster."""
        expected = {node.name for node in self.running_nodes}
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            seen = self.cluster_running_nodes()
            if seen == expected:
                return
            time.sleep(0.5)
        raise BrokerError(f"cluster not formed after {timeout:.0f}s: running {sorted(seen)}")

    def grow_quorum_queues(self) -> None:
        """Give every quorum queue of our vhost a member on each running node.

        Queues from definitions.json are declared while the first node is alone; growing is
        a no-op for a queue that already has a member on the node.
        """
        anchor = self.any_running()
        for node in self.running_nodes:
            anchor.queues(
                "grow", node.name, "all", "--vhost-pattern", f"^{VHOST}$", "--errors-only"
            )

    def queue_members(self) -> dict[str, tuple[str, set[str], str]]:
        """Per queue of our vhost: (type, member nodes, node that leads or holds it).

        A quorum queue names its leader; a classic queue lives on one node, the one whose
        `list_queues --local` shows it (its pid printed remotely does not name the node).
        """
        out = self.any_running().ctl(
            "list_queues",
            "-p",
            VHOST,
            "--quiet",
            "--formatter",
            "json",
            "name",
            "type",
            "members",
            "leader",
        )
        result: dict[str, tuple[str, set[str], str]] = {}
        for row in json.loads(out or "[]"):
            members = row.get("members")
            members = set(members) if isinstance(members, list) else set()
            result[row["name"]] = (row["type"], members, row.get("leader") or "")
        if any(not leader for _, _, leader in result.values()):
            for node in self.running_nodes:
                local = node.ctl(
                    "list_queues", "-p", VHOST, "--local", "--quiet", "--formatter", "json", "name"
                )
                for row in json.loads(local or "[]"):
                    queue_type, members, leader = result.get(row["name"], ("classic", set(), ""))
                    if not leader:
                        result[row["name"]] = (queue_type, members or {node.name}, node.name)
        return result


def _each(nodes: Sequence[ClusterNode], action: Callable[[ClusterNode], None]) -> None:
    """Run `action` on every node at once; re-raise the first failure after all are done."""
    with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
        futures = [pool.submit(action, node) for node in nodes]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


@contextmanager
def running_cluster(**kwargs: object) -> Iterator[LocalCluster]:
    """A started cluster, removed with its data at the end, however the block ends."""
    cluster = LocalCluster(**kwargs)  # type: ignore[arg-type]
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
