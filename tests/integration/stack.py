"""The real system for integration tests: a broker, the auth service, relays, as processes.

The broker comes from one place, `start_broker()`: testcontainers' RabbitMQ 4 where a Docker
engine answers, otherwise a private node from the installed `rabbitmq-server`
(deploy/local_broker.py); MESSENGER_TEST_BROKER=local|container|auto forces the choice
(tests/integration/container_broker.py). Services run as real subprocesses of the console
entry points, so a test can SIGKILL them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pika
import pika.exceptions

from deploy.local_broker import LocalNode, free_port, service_passwords
from deploy.processes import ServiceProcess
from protocol.topology import INBOX_EXCHANGE, VHOST
from services.relay.status import Counters, RelayStatus
from tests.integration.container_broker import ContainerNode, chosen_broker

T = TypeVar("T")

# The auth cache TTL the tests configure: a revoked token is refused after at most this.
TEST_AUTH_CACHE_TTL_MS = 1000


def eventually(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Retry `check` until it returns a truthy value or stops raising AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"condition still false after {timeout}s: {check}")
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


@dataclass
class Broker:
    """What tests use of a broker, whichever kind runs it."""

    node: LocalNode
    auth_api_port: int  # where the broker asks the auth service (/broker/*)
    auth_api_bind: str = "127.0.0.1"  # a broker in a container reaches the host's address

    @property
    def host(self) -> str:
        return self.node.host

    @property
    def amqp_port(self) -> int:
        return self.node.amqp_port

    @property
    def public_amqp_url(self) -> str:
        return self.node.public_amqp_url

    @property
    def service_passwords(self) -> dict[str, str]:
        return self.node.service_passwords

    def params(self, username: str, password: str) -> pika.ConnectionParameters:
        return self.node.connection_parameters(username, password)

    def connect(self, username: str, password: str) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(username, password))

    def queue_depths(self) -> dict[str, int]:
        return self.node.queue_depths()

    def stop(self) -> None:
        self.node.stop()

    def start(self) -> None:
        self.node.start()

    def restart(self) -> None:
        self.node.restart()

    def kill(self) -> None:
        self.node.kill()

    def remove(self) -> None:
        self.node.remove()


def start_broker(**node_options: Any) -> Broker:
    """A started broker of our own. The caller removes it (`Broker.remove`)."""
    auth_api_port = free_port()
    if chosen_broker().kind == "container":
        node: LocalNode = ContainerNode(
            auth_url=f"http://host.docker.internal:{auth_api_port}",
            service_passwords=service_passwords(),
            auth_cache_ttl_ms=TEST_AUTH_CACHE_TTL_MS,
            **node_options,
        )
    else:
        node = LocalNode(
            auth_url=f"http://127.0.0.1:{auth_api_port}",
            service_passwords=service_passwords(),
            auth_cache_ttl_ms=TEST_AUTH_CACHE_TTL_MS,
            **node_options,
        )
    node.start()
    bind = "0.0.0.0" if "host.docker.internal" in node.auth_url else "127.0.0.1"
    return Broker(node=node, auth_api_port=auth_api_port, auth_api_bind=bind)


@dataclass
class AuthService(ServiceProcess):
    public_port: int = 0
    broker_api_port: int = 0
    db_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    @property
    def broker_api_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_api_port}"

    def wait_ready(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            assert self.alive, f"auth service exited:\n{self.log()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, timeout=timeout, interval=0.1)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `messenger-auth ARGS` against this service's store and broker."""
        return self.cli_with({}, *args, stdin=stdin)

    def cli_with(
        self, env: dict[str, str], *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`cli()` with some settings changed."""
        return subprocess.run(
            [sys.executable, "-m", "services.auth", *args],
            env={**os.environ, **self.env, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def auth_env(broker: Broker, db_path: Path, public_port: int, **overrides: str) -> dict[str, str]:
    env = {
        "MESSENGER_AUTH_DB_PATH": str(db_path),
        "MESSENGER_AUTH_PUBLIC_HOST": "127.0.0.1",
        "MESSENGER_AUTH_PUBLIC_PORT": str(public_port),
        "MESSENGER_AUTH_BROKER_API_HOST": broker.auth_api_bind,
        "MESSENGER_AUTH_BROKER_API_PORT": str(broker.auth_api_port),
        "MESSENGER_AUTH_AMQP_HOST": broker.host,
        "MESSENGER_AUTH_AMQP_PORT": str(broker.amqp_port),
        "MESSENGER_AUTH_AMQP_PASSWORD": broker.service_passwords["auth"],
        "MESSENGER_AUTH_PUBLIC_AMQP_URL": broker.public_amqp_url,
        "MESSENGER_AUTH_WEB_STOMP_URLS": broker.node.web_stomp_url,
        "MESSENGER_AUTH_MANAGEMENT_URLS": broker.node.management_url,
        # Cheap hashes keep the suite fast; the production cost is measured by `make bench`.
        "MESSENGER_AUTH_ARGON2_TIME_COST": "1",
        "MESSENGER_AUTH_ARGON2_MEMORY_KIB": "8192",
        "MESSENGER_AUTH_ARGON2_PARALLELISM": "1",
        # Every test logs in from 127.0.0.1: a per-address limit would let one test's failed
        # logins lock out the rest. test_auth_ratelimit checks it on an auth service of its own.
        "MESSENGER_AUTH_LOGIN_FAILURES_PER_ADDRESS": "100000",
    }
    env.update(overrides)
    return env


def start_auth(broker: Broker, workdir: Path | None = None, **env_overrides: str) -> AuthService:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="messenger-auth-"))
    public_port = free_port()
    db_path = workdir / "users.sqlite3"
    service = AuthService(
        module="services.auth",
        args=["serve"],
        env=auth_env(broker, db_path, public_port, **env_overrides),
        log_path=workdir / f"auth-{public_port}.log",
        public_port=public_port,
        broker_api_port=broker.auth_api_port,
        db_path=db_path,
    )
    service.start()
    try:
        service.wait_ready()
    except BaseException:  # not ready in time: do not leave it running behind the test run
        service.stop()
        raise
    return service


def node_list(nodes: Sequence[LocalNode]) -> str:
    """`host:port,...`: every node of a cluster, for MESSENGER_{AUTH,RELAY}_AMQP_NODES."""
    return ",".join(f"{node.host}:{node.amqp_port}" for node in nodes)


def cluster_auth_env(nodes: Sequence[LocalNode]) -> dict[str, str]:
    """Auth-service settings that use every node and announce every node to clients."""
    return {
        "MESSENGER_AUTH_AMQP_NODES": node_list(nodes),
        "MESSENGER_AUTH_PUBLIC_AMQP_URLS": ",".join(node.public_amqp_url for node in nodes),
    }


def cluster_relay_env(nodes: Sequence[LocalNode]) -> dict[str, str]:
    return {"MESSENGER_RELAY_AMQP_NODES": node_list(nodes)}


# The relay's rate limits off: the reliability tests send thousands of messages from one
# account as fast as they can. tests/hostile/test_relay_flood.py runs a relay with limits.
UNLIMITED_RELAY = {
    "MESSENGER_RELAY_SENDER_RATE": "0",
    "MESSENGER_RELAY_RECIPIENT_RATE": "0",
    "MESSENGER_RELAY_RECEIPT_RATE": "0",
}


def relay_env(broker: Broker, **overrides: str) -> dict[str, str]:
    env = {
        "MESSENGER_RELAY_AMQP_HOST": broker.host,
        "MESSENGER_RELAY_AMQP_PORT": str(broker.amqp_port),
        "MESSENGER_RELAY_AMQP_PASSWORD": broker.service_passwords["relay"],
        **UNLIMITED_RELAY,
    }
    env.update(overrides)
    return env


@dataclass
class RelayProcess(ServiceProcess):
    """A relay that keeps a status file (services/relay/status.py): where it stands, and
    its counters, read from there rather than from its log."""

    status_path: Path = field(default_factory=Path)

    def start(self) -> None:
        self.status_path.unlink(missing_ok=True)  # a restart must not read the last run's
        super().start()

    def status(self) -> RelayStatus | None:
        return RelayStatus.read(self.status_path)

    @property
    def counters(self) -> Counters:
        status = self.status()
        return status.counters if status is not None else Counters()

    def fresh_counters(self, timeout: float = 15) -> Counters:
        """The counters of a status written after this call: nothing handled before it is
        missing (the file is rewritten every second while the relay consumes)."""
        asked = datetime.now(UTC)

        def fresh() -> RelayStatus | None:
            status = self.status()
            return status if status is not None and status.updated_at > asked else None

        status = eventually(fresh, timeout=timeout)
        assert status is not None
        return status.counters

    def wait_consuming(self, sessions: int = 1, timeout: float = 30) -> RelayStatus:
        """Until the relay consumes every outbox shard, for the `sessions`th time since it
        started (each reconnect is one more)."""

        def consuming() -> RelayStatus | None:
            assert self.alive, f"the relay exited:\n{self.log()}"
            status = self.status()
            if status is None or status.lifecycle.state != "consuming":
                return None
            return status if status.lifecycle.consuming_sessions == sessions else None

        status = eventually(consuming, timeout=timeout, interval=0.05)
        assert status is not None
        return status


def start_relay(broker: Broker, workdir: Path | None = None, **env_overrides: str) -> RelayProcess:
    """A relay process, returned once it consumes the outbox."""
    relay = launch_relay(broker, workdir, **env_overrides)
    try:
        relay.wait_consuming()
    except BaseException:  # not consuming in time: do not leave it running behind the run
        relay.stop()
        raise
    return relay


def launch_relay(broker: Broker, workdir: Path | None = None, **env_overrides: str) -> RelayProcess:
    """A relay process, returned at once (the broker may not even be up)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="messenger-relay-"))
    name = f"relay-{uuid.uuid4().hex[:8]}"
    status_path = workdir / f"{name}.status.json"
    env = {"MESSENGER_RELAY_STATUS_FILE": str(status_path), **env_overrides}
    relay = RelayProcess(
        module="services.relay",
        args=[],
        env=relay_env(broker, **env),
        log_path=workdir / f"{name}.log",
        status_path=status_path,
    )
    relay.start()
    return relay


@dataclass(frozen=True)
class ArchivePlace:
    """Where the archive of a test stack listens and the key the auth service proves itself
    with: chosen before either starts (the auth service is told, the archive binds it)."""

    port: int
    key: str

    @classmethod
    def fresh(cls) -> ArchivePlace:
        return cls(free_port(), secrets.token_urlsafe(24))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth_env(self) -> dict[str, str]:
        """Settings of an auth service that proxies the history API to this archive."""
        return {"MESSENGER_AUTH_ARCHIVE_URL": self.url, "MESSENGER_AUTH_ARCHIVE_KEY": self.key}


@dataclass
class ArchiveProcess(ServiceProcess):
    place: ArchivePlace = field(default_factory=lambda: ArchivePlace(0, ""))

    def wait_ready(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            assert self.alive, f"the archive exited:\n{self.log()}"
            try:
                return httpx.get(f"{self.place.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, timeout=timeout, interval=0.1)

    def get(self, path: str, user: str, **params: str) -> httpx.Response:
        """Ask the archive directly, as the auth service does."""
        headers = {"X-Messenger-User": user, "X-Messenger-Archive-Key": self.place.key}
        return httpx.get(f"{self.place.url}{path}", params=params, headers=headers, timeout=30)


def start_archive(
    broker: Broker,
    place: ArchivePlace,
    database_url: str,
    workdir: Path | None = None,
    **env_overrides: str,
) -> ArchiveProcess:
    """An archive process (ingest + history API), returned once its API answers."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="messenger-archive-"))
    env = {
        "MESSENGER_ARCHIVE_AMQP_HOST": broker.host,
        "MESSENGER_ARCHIVE_AMQP_PORT": str(broker.amqp_port),
        "MESSENGER_ARCHIVE_AMQP_PASSWORD": broker.service_passwords["archive"],
        "MESSENGER_ARCHIVE_DATABASE_URL": database_url,
        "MESSENGER_ARCHIVE_HOST": "127.0.0.1",
        "MESSENGER_ARCHIVE_PORT": str(place.port),
        "MESSENGER_ARCHIVE_KEY": place.key,
        **env_overrides,
    }
    archive = ArchiveProcess(
        module="services.archive",
        args=[],
        env=env,
        log_path=workdir / f"archive-{place.port}.log",
        place=place,
    )
    archive.start()
    try:
        archive.wait_ready()
    except BaseException:
        archive.stop()
        raise
    return archive


@dataclass
class User:
    username: str
    password: str
    display_name: str
    token: str
    device_queue: str = ""


def unique_username(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def signup_and_login(auth: AuthService, prefix: str = "u", display_name: str | None = None) -> User:
    username = unique_username(prefix)
    password = secrets.token_urlsafe(12)
    name = display_name or f"User {username}"
    response = httpx.post(
        f"{auth.url}/v1/users",
        json={"username": username, "display_name": name, "password": password},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    response = httpx.post(
        f"{auth.url}/v1/sessions", json={"username": username, "password": password}, timeout=30
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    return User(username, password, name, answer["token"], answer.get("device_queue", ""))


def log_in_device(auth: AuthService, user: User) -> User:
    """Another login (device) of `user`: its own token and device queue."""
    response = httpx.post(
        f"{auth.url}/v1/sessions",
        json={"username": user.username, "password": user.password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    return User(user.username, user.password, user.display_name, answer["token"],
                answer["device_queue"])  # fmt: skip


def close_quietly(connection: pika.BlockingConnection) -> None:
    with contextlib.suppress(Exception):
        connection.close()


def login_refused(broker: Broker, username: str, password: str, vhost: str | None = None) -> bool:
    """True when the broker refuses an AMQP login as `username` with `password`."""
    params = broker.params(username, password)
    if vhost is not None:
        params.virtual_host = vhost
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPConnectionError:
        return True
    close_quietly(connection)
    return False


def deliver_as_relay(node: LocalNode, username: str, *bodies: bytes) -> None:
    """Put messages in `inbox.<username>` the way the relay does (persistent, mandatory,
    confirmed), through `node` (a single node, or one node of a cluster)."""
    connection = pika.BlockingConnection(
        node.connection_parameters("relay", node.service_passwords["relay"])
    )
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(
                INBOX_EXCHANGE,
                username,
                body,
                pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                mandatory=True,
            )
    finally:
        close_quietly(connection)


__all__ = ["VHOST", "AuthService", "Broker", "RelayProcess", "ServiceProcess", "User"]
