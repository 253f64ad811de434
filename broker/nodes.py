"""Several broker nodes, one of which is used at a time: parsing the list, choosing the next.

Services name the nodes of a cluster as `host:port,host:port,...` (MESSENGER_*_AMQP_NODES);
clients get `amqp://host:port` URLs from `GET /v1/meta`. Both connect to one node and, when
it goes, to the next one: `NodeRotation` says which node to try and how long to wait first
(no wait until every node has failed in a row, then the capped doubling delay of
backoff.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from broker.backoff import Backoff

T = TypeVar("T")

DEFAULT_AMQP_PORT = 5672


def parse_node(text: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6-address]:port` -> (host, port); ValueError if malformed."""
    item = text.strip()
    if not item:
        raise ValueError("empty broker node")
    host, port = item, DEFAULT_AMQP_PORT
    if item.startswith("["):  # [::1]:5672
        end = item.find("]")
        if end < 0:
            raise ValueError(f"broker node {item!r}: unclosed '['")
        host, rest = item[1:end], item[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"broker node {item!r}: expected ':port' after ']'")
            port = _port(item, rest[1:])
    elif item.count(":") == 1:
        host, port_text = item.split(":")
        port = _port(item, port_text)
    elif ":" in item:
        raise ValueError(f"broker node {item!r}: write an IPv6 address as [address]:port")
    if not host:
        raise ValueError(f"broker node {item!r}: no host")
    return host, port


def parse_nodes(text: str | Sequence[str]) -> list[tuple[str, int]]:
    """A comma-separated list (or a list of strings) of nodes, in order, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    nodes: list[tuple[str, int]] = []
    for item in items:
        if not item.strip():
            continue
        node = parse_node(item)
        if node not in nodes:
            nodes.append(node)
    return nodes


def parse_amqp_url(url: str) -> tuple[str, int]:
    """`amqp://host[:port][/...]` -> (host, port); ValueError for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_AMQP_PORT
    except ValueError as exc:
        raise ValueError(f"unusable broker URL {url!r}: {exc}") from None
    if parts.scheme != "amqp" or not parts.hostname:
        raise ValueError(f"unusable broker URL {url!r}")
    return parts.hostname, port


def _port(item: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"broker node {item!r}: port must be a number from 1 to 65535")
    return int(text)


class NodeRotation(Generic[T]):
    """The node to connect to now, and the delay before the next attempt after a failure.

    Every failure (a refused connection, or a lost one) moves on to the next node. While the
    current round still has nodes that were not tried, the next attempt starts at once; once
    every node has failed in a row, attempts wait a capped, doubling delay. `succeeded()`
    (the connection is in use again) starts a fresh round from the node that works.
    """

    def __init__(self, nodes: Sequence[T], max_delay: float, first_delay: float = 0.5) -> None:
        if not nodes:
            raise ValueError("no broker nodes to connect to")
        self.nodes = list(nodes)
        self.index = 0
        self.failures = 0  # in a row, since the last success
        self._backoff = Backoff(max_delay, first_delay)

    @property
    def current(self) -> T:
        return self.nodes[self.index]

    def failed(self) -> float:
        """Move to the next node; return how long to wait before connecting to it."""
        self.failures += 1
        self.index = (self.index + 1) % len(self.nodes)
        if self.failures < len(self.nodes):
            return 0.0
        return self._backoff.next_delay()

    def succeeded(self) -> None:
        self.failures = 0
        self._backoff.reset()

    @property
    def round_failed(self) -> bool:
        """Every node has failed since the last success."""
        return self.failures >= len(self.nodes)
