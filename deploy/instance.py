"""What makes one `make run` instance itself, kept in its data directory: node name and ports.

Clients keep the broker address `GET /v1/meta` gave them, so a broker that moved to another
port at every start would strand them. The first start of a data directory therefore picks
the AMQP port(s) (MESSENGER_RUN_AMQP_PORT, else the first free ones from 5682 up) and the
node name (MESSENGER_RUN_NODE_NAME, else one derived from the directory's path, so two
instances with two directories never share a name), writes both to `instance.json`, and every
later start of that directory uses them again. 5682 rather than 5672: a system RabbitMQ
usually holds 5672, and ours must never be mistaken for it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from deploy.local_broker import port_is_free

logger = logging.getLogger("messenger.run")

FILE_NAME = "instance.json"
FIRST_AMQP_PORT = 5682
PORT_SCAN = 200
# Node data written by `make run` before node names were derived from the data directory.
LEGACY_NAME = "messenger-local"
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
HOST = "localhost"


class InstanceFile(BaseModel):
    """`<data dir>/instance.json`."""

    node_name: str  # without @localhost; a cluster's nodes are <node_name>-1..3
    amqp_ports: list[int]


@dataclass(frozen=True)
class Identity:
    node_name: str
    amqp_ports: list[int]

    def node(self) -> str:
        """The single node's full name."""
        return f"{self.node_name}@{HOST}"


def check_node_name(value: str) -> str:
    """A node name as given in MESSENGER_RUN_NODE_NAME: `name` or `name@localhost`."""
    name, _, host = value.partition("@")
    if host and host != HOST:
        raise ValueError(f"node name {value!r}: the host part must be {HOST}")
    if not NODE_NAME_RE.fullmatch(name):
        raise ValueError(f"node name {value!r}: use letters, digits, '-' and '_' only")
    return name


def derived_node_name(data_dir: Path) -> str:
    """`messenger-<dir name>-<hash of its path>`: readable, and unique per directory."""
    path = str(data_dir.resolve())
    slug = re.sub(r"[^a-z0-9]+", "-", data_dir.name.lower()).strip("-")[:24] or "run"
    return f"messenger-{slug}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"


def resolve(
    data_dir: Path,
    *,
    count: int = 1,
    host: str = "127.0.0.1",
    requested_port: int = 0,
    requested_name: str = "",
    broker_dir: Path | None = None,
) -> Identity:
    """This directory's identity: remembered, or chosen now and remembered from now on.

    `broker_dir` is where the node data lives (a node's database is kept under its name, so
    a data directory from before this file existed keeps the name it was created with).
    """
    path = data_dir / FILE_NAME
    remembered = _load(path)
    name = (
        check_node_name(requested_name)
        if requested_name
        else remembered.node_name
        if remembered
        else _legacy_name(broker_dir or data_dir / "rabbitmq", count) or derived_node_name(data_dir)
    )
    if remembered and name != remembered.node_name:
        logger.warning(
            "node name changed from %s to %s: the broker starts from an empty database "
            "(the old one stays in %s)",
            remembered.node_name,
            name,
            broker_dir or data_dir / "rabbitmq",
        )
    if requested_port:
        ports = [requested_port + i for i in range(count)]
    elif remembered and len(remembered.amqp_ports) == count:
        ports = list(remembered.amqp_ports)
        taken = [port for port in ports if not port_is_free(host, port)]
        if taken:
            ports = free_ports(host, count)
            logger.warning(
                "AMQP port %s of this data directory is taken by another program; using %s "
                "(clients ask the server for the new address when they reconnect)",
                ", ".join(map(str, taken)),
                ", ".join(map(str, ports)),
            )
    else:
        ports = free_ports(host, count)
    identity = Identity(node_name=name, amqp_ports=ports)
    if remembered is None or remembered.node_name != name or remembered.amqp_ports != ports:
        _save(path, identity)
    return identity


def free_ports(host: str, count: int, first: int = FIRST_AMQP_PORT) -> list[int]:
    """The first `count` ports from `first` up that nobody listens on."""
    found: list[int] = []
    for port in range(first, first + PORT_SCAN):
        if port_is_free(host, port):
            found.append(port)
            if len(found) == count:
                return found
    raise OSError(f"no free port between {first} and {first + PORT_SCAN - 1} for AMQP")


def stable_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Free ports below the kernel's ephemeral range, for listeners that must get the same
    port again after a restart: a port in that range may meanwhile have been handed to some
    program's outgoing connection, and then it cannot be bound."""
    low = _ephemeral_start()
    start = random.randrange(max(1024, low - 8000), low - PORT_SCAN)
    return free_ports(host, count, first=start)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _legacy_name(broker_dir: Path, count: int) -> str | None:
    databases: Sequence[Path] = (
        [broker_dir / "mnesia" / f"{LEGACY_NAME}@{HOST}"]
        if count == 1
        else [broker_dir / "node-1" / "mnesia" / f"{LEGACY_NAME}-1@{HOST}"]
    )
    return LEGACY_NAME if any(db.is_dir() for db in databases) else None


def _load(path: Path) -> InstanceFile | None:
    try:
        return InstanceFile.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None


def _save(path: Path, identity: Identity) -> None:
    record = InstanceFile(node_name=identity.node_name, amqp_ports=identity.amqp_ports)
    path.write_text(record.model_dump_json(indent=2) + "\n")
