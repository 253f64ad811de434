"""`make run`: the whole system on this machine until Ctrl-C, parts restarted when they crash.

With a Docker engine and Compose v2, it is `docker compose up`. Otherwise a private RabbitMQ
node from the installed `rabbitmq-server`, the auth service and the relay run as local
processes under a supervisor (deploy/supervisor.py). The node's data, the user store and the
instance's identity (node name, AMQP port: deploy/instance.py) live in one directory that
survives restarts, so accounts, waiting messages and the broker's address are the same next
time.

Start order: the auth service first (its broker listener must answer before the node takes
its first login, or the node would refuse that login), then the broker, then the relays.
Ctrl-C stops the relays, the auth service and the broker, in that order.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx
import platformdirs
import typer
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy import instance, run_state
from deploy.local_broker import BrokerError, LocalNode, service_passwords
from deploy.local_cluster import LocalCluster
from deploy.processes import ServiceProcess
from deploy.supervisor import NodePart, Part, ProcessPart, Supervisor
from services.logs import configure_logging

logger = logging.getLogger("messenger.run")

REPO = Path(__file__).resolve().parent.parent
# Written by `make images` (deploy/images/build-local.sh): compose variables naming images
# built here, for machines where no registry is reachable.
LOCAL_IMAGES_ENV = REPO / "deploy" / "images" / "local.env"

# `make run CLUSTER=1` with Docker: compose's `cluster` profile, quorum queues, and every
# node for the services (on the deployment's network) and for clients (published ports).
CLUSTER_COMPOSE_ENV = {
    "MESSENGER_QUEUE_TYPE": "quorum",
    "MESSENGER_INBOX_QUEUE_TYPE": "quorum",
    "MESSENGER_BROKER_NODES": "broker:5672,broker-2:5672,broker-3:5672",
    "MESSENGER_PUBLIC_AMQP_URLS": "amqp://127.0.0.1:5672,amqp://127.0.0.1:5673,amqp://127.0.0.1:5674",
    "MESSENGER_WEB_STOMP_URLS": "ws://broker:15674/ws,ws://broker-2:15674/ws,ws://broker-3:15674/ws",
    "MESSENGER_MANAGEMENT_URLS": "http://broker:15672,http://broker-2:15672,http://broker-3:15672",
}

# A local broker is cheap to knock on: the relay retries at least every second, as the
# clients do, so messages flow again within about a second of a broker restart.
RELAY_RECONNECT_MAX_DELAY = "1"
START_TIMEOUT = 30.0


def default_data_dir() -> Path:
    """Root's home is closed to the `rabbitmq` user the broker runs as: use /var/lib then."""
    if os.geteuid() == 0:
        return Path("/var/lib/messenger/local-run")
    return platformdirs.user_data_path("messenger") / "local-run"


class RunSettings(BaseSettings):
    """`make run`'s knobs, from MESSENGER_RUN_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="MESSENGER_RUN_")

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    public_port: int = 8080
    # 0: the port this data directory used before, else the first free one from 5682 up.
    amqp_port: int = 0
    # Empty: the name this data directory used before, else one derived from its path.
    node_name: str = ""
    relays: int = 1
    docker: bool = True  # use docker compose when a Docker engine and Compose v2 answer

    def instance_dir(self, cluster: bool) -> Path:
        """Where one instance keeps its data: a cluster's beside the single node's."""
        return self.data_dir / "cluster" if cluster else self.data_dir


def load_settings() -> RunSettings:
    """The settings from the environment; a bad one is one log line and exit status 2."""
    try:
        return RunSettings()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        logger.error("bad setting MESSENGER_RUN_%s: %s", where.upper(), error["msg"])
        raise typer.Exit(2) from None


class RunFailed(RuntimeError):
    """`make run` stopped because a part could not be kept running."""


class StartFailed(RuntimeError):
    """A part did not come up at start-up; nothing is left running."""


def _succeeds(command: list[str]) -> bool:
    try:
        probe = subprocess.run(command, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def compose_available() -> bool:
    """Whether `docker compose up` can work here; says in one line why not, if it nearly can."""
    if shutil.which("docker") is None:
        return False
    if not _succeeds(["docker", "compose", "version"]):
        logger.info(
            "docker is installed but not Compose v2 (`docker compose version` fails): "
            "running a private RabbitMQ node instead"
        )
        return False
    if not _succeeds(["docker", "info"]):
        logger.info("no Docker engine answers (`docker info` fails): running a private node")
        return False
    return True


def _wait_ready(auth: ServiceProcess, urls: list[str], stop: threading.Event) -> None:
    """Until every URL answers 200 (the auth service's two listeners)."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(urls)
    while pending:
        if stop.is_set():
            raise RunFailed("start-up interrupted")
        if not auth.alive:
            raise RunFailed(
                f"the auth service exited during start-up ({auth.exit_cause()}; see its log above)"
            )
        if time.monotonic() > deadline:
            raise RunFailed(f"the auth service did not answer within {START_TIMEOUT:.0f} s")
        try:
            if httpx.get(pending[0], timeout=1).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.1)


class LocalRun:
    """One instance of the system as local processes: built, started, supervised, stopped."""

    def __init__(self, settings: RunSettings, cluster: bool = False) -> None:
        self.settings = settings
        self.cluster = cluster
        self.data_dir = settings.instance_dir(cluster)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        broker_dir = self.data_dir / "rabbitmq"
        identity = instance.resolve(
            self.data_dir,
            count=3 if cluster else 1,
            host=settings.host,
            requested_port=settings.amqp_port,
            requested_name=settings.node_name,
            broker_dir=broker_dir,
        )
        # Fresh each run: definitions.json re-imports the accounts at every boot.
        passwords = service_passwords()
        # The broker's auth backend calls http://127.0.0.1:<port>/<key>/broker/...; only the
        # node's config (mode 0600) knows the key: any other local program is turned away.
        self.broker_api_port, self.archive_port, *dist_ports = instance.stable_ports(
            5 if cluster else 3
        )
        broker_api_key = secrets.token_urlsafe(24)
        archive_key = secrets.token_urlsafe(24)  # the auth service proves itself with it
        auth_url = f"http://127.0.0.1:{self.broker_api_port}/{broker_api_key}"
        self.broker: LocalNode | LocalCluster
        if cluster:
            self.broker = LocalCluster(
                auth_url=auth_url,
                service_passwords=passwords,
                base_dir=broker_dir,
                name_prefix=identity.node_name,
                amqp_ports=identity.amqp_ports,
                dist_ports=dist_ports,
                host=settings.host,
            )
            self.nodes: list[LocalNode] = list(self.broker.nodes)
            inbox_queue_type = os.environ.get("MESSENGER_AUTH_INBOX_QUEUE_TYPE", "quorum")
        else:
            self.broker = LocalNode(
                auth_url=auth_url,
                service_passwords=passwords,
                data_dir=broker_dir,
                amqp_port=identity.amqp_ports[0],
                dist_port=dist_ports[0],
                name=identity.node(),
                host=settings.host,
            )
            self.nodes = [self.broker]
            inbox_queue_type = os.environ.get("MESSENGER_AUTH_INBOX_QUEUE_TYPE", "classic")
        for node in self.nodes:
            node.cancel = self.stop_event  # Ctrl-C abandons a node's (re)start at once
        amqp_nodes = ",".join(f"{n.host}:{n.amqp_port}" for n in self.nodes)
        self.public_url = f"http://{settings.host}:{settings.public_port}"
        self.auth_env = {
            "MESSENGER_AUTH_DB_PATH": str(self.data_dir / "users.sqlite3"),
            "MESSENGER_AUTH_PUBLIC_HOST": settings.host,
            "MESSENGER_AUTH_PUBLIC_PORT": str(settings.public_port),
            "MESSENGER_AUTH_BROKER_API_HOST": "127.0.0.1",
            "MESSENGER_AUTH_BROKER_API_PORT": str(self.broker_api_port),
            "MESSENGER_AUTH_BROKER_API_KEY": broker_api_key,
            "MESSENGER_AUTH_AMQP_NODES": amqp_nodes,
            "MESSENGER_AUTH_AMQP_PASSWORD": passwords["auth"],
            "MESSENGER_AUTH_PUBLIC_AMQP_URL": self.nodes[0].public_amqp_url,
            "MESSENGER_AUTH_PUBLIC_AMQP_URLS": ",".join(n.public_amqp_url for n in self.nodes),
            "MESSENGER_AUTH_INBOX_QUEUE_TYPE": inbox_queue_type,
            "MESSENGER_AUTH_WEB_STOMP_URLS": ",".join(n.web_stomp_url for n in self.nodes),
            "MESSENGER_AUTH_ARCHIVE_URL": f"http://127.0.0.1:{self.archive_port}",
            "MESSENGER_AUTH_ARCHIVE_KEY": archive_key,
            "MESSENGER_AUTH_MANAGEMENT_URLS": ",".join(n.management_url for n in self.nodes),
        }
        self.auth = ServiceProcess(module="services.auth", args=["serve"], env=self.auth_env)
        # The archive: SQLite in the data directory unless MESSENGER_ARCHIVE_DATABASE_URL says
        # otherwise (PostgreSQL: docs/operations.md).
        self.archive = ServiceProcess(
            module="services.archive",
            args=[],
            env={
                "MESSENGER_ARCHIVE_AMQP_NODES": amqp_nodes,
                "MESSENGER_ARCHIVE_AMQP_PASSWORD": passwords["archive"],
                "MESSENGER_ARCHIVE_DATABASE_URL": os.environ.get(
                    "MESSENGER_ARCHIVE_DATABASE_URL",
                    f"sqlite:///{self.data_dir / 'archive.sqlite3'}",
                ),
                "MESSENGER_ARCHIVE_HOST": "127.0.0.1",
                "MESSENGER_ARCHIVE_PORT": str(self.archive_port),
                "MESSENGER_ARCHIVE_KEY": archive_key,
                "MESSENGER_ARCHIVE_RECONNECT_MAX_DELAY_SECONDS": RELAY_RECONNECT_MAX_DELAY,
            },
        )
        self.relays = [
            ServiceProcess(
                module="services.relay",
                args=[],
                env={
                    "MESSENGER_RELAY_AMQP_NODES": amqp_nodes,
                    "MESSENGER_RELAY_AMQP_PASSWORD": passwords["relay"],
                    "MESSENGER_RELAY_RECONNECT_MAX_DELAY_SECONDS": RELAY_RECONNECT_MAX_DELAY,
                },
            )
            for _ in range(settings.relays)
        ]
        relay_names = (
            [f"relay {i}" for i in range(1, len(self.relays) + 1)]
            if len(self.relays) > 1
            else ["relay"]
        )
        node_parts: list[Part] = [NodePart(f"broker node {node.name}", node) for node in self.nodes]
        self.parts: list[Part] = [
            ProcessPart("auth service", self.auth),
            *node_parts,
            *(ProcessPart(name, p) for name, p in zip(relay_names, self.relays, strict=True)),
            ProcessPart("archive", self.archive),
        ]
        self.supervisor = Supervisor(self.parts, self.stop_event, on_restart=self._write_state)

    def run(self) -> None:
        """Start, supervise until Ctrl-C (or giving up), stop. Raises RunFailed on giving up."""
        try:
            try:
                self._start()
            except (BrokerError, RunFailed, OSError) as exc:
                if self.stop_event.is_set():  # Ctrl-C during start-up
                    return
                raise StartFailed(_with_hint(str(exc))) from None
            logger.info(
                "Messenger is up: web and API %s/, broker %s, data in %s. Ctrl-C stops everything.",
                self.public_url,
                ", ".join(node.public_amqp_url for node in self.nodes),
                self.data_dir,
            )
            self.supervisor.run()
        finally:
            self._stop()
        if self.supervisor.gave_up is not None:
            raise RunFailed(self.supervisor.gave_up)

    def _start(self) -> None:
        self.auth.start()
        broker_api = f"http://127.0.0.1:{self.broker_api_port}"
        key = self.auth_env["MESSENGER_AUTH_BROKER_API_KEY"]
        _wait_ready(
            self.auth,
            [f"{self.public_url}/healthz", f"{broker_api}/{key}/broker/topic"],
            self.stop_event,
        )
        self.broker.start()
        self._migrate()
        for relay in self.relays:
            relay.start()
        self.archive.start()
        self._write_state()

    def _migrate(self) -> None:
        """`messenger-auth migrate`: anchors for users of an older version (idempotent)."""
        done = subprocess.run(
            [sys.executable, "-m", "services.auth", "migrate"],
            env={**os.environ, **self.auth_env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RunFailed(f"messenger-auth migrate failed: {done.stderr.strip()}")
        logger.info("broker queues: %s", done.stdout.strip())

    def _stop(self) -> None:
        self.stop_event.set()
        logger.info("stopping")
        for relay in self.relays:
            relay.stop()
        self.archive.stop()
        self.auth.stop()
        self.broker.stop()
        run_state.remove(self.data_dir)
        logger.info("stopped")

    def _write_state(self) -> None:
        run_state.write(
            self.data_dir,
            run_state.RunningState(
                pid=os.getpid(),
                public_url=self.public_url,
                amqp_urls=[node.public_amqp_url for node in self.nodes],
                data_dir=str(self.data_dir),
                parts={part.name: part.pid for part in self.parts},
                restarts=dict(self.supervisor.restarts),
                auth_env=self.auth_env,
            ),
        )


def _with_hint(reason: str) -> str:
    if "duplicate_node_name" in reason:
        return (
            f"{reason}; is another `make run` using this node name? give each instance its "
            "own MESSENGER_RUN_DATA_DIR (or set MESSENGER_RUN_NODE_NAME)"
        )
    return reason


def run_local(settings: RunSettings, cluster: bool = False) -> None:
    """Broker, auth, relays as supervised local processes until Ctrl-C.

    With `cluster`, the broker is three nodes joined into one cluster (deploy/local_cluster.py)
    with quorum outbox shards and, unless MESSENGER_AUTH_INBOX_QUEUE_TYPE says otherwise,
    quorum inboxes. Its data (and its own user store) live in `<data_dir>/cluster`.
    """
    already = run_state.read(settings.instance_dir(cluster))
    if already is not None:
        raise StartFailed(
            f"Messenger already runs on {settings.instance_dir(cluster)} (pid {already.pid}, API "
            f"{already.public_url}); stop it first or set MESSENGER_RUN_DATA_DIR"
        )
    try:
        local = LocalRun(settings, cluster)
    except (ValueError, OSError) as exc:
        raise StartFailed(str(exc)) from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        local.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    local.run()


def compose_command(cluster: bool, local_images_env: Path) -> list[str]:
    """`docker compose up`, on the locally built images when `make images` made them (a
    machine without a registry cannot pull the official ones)."""
    command = ["docker", "compose"]
    if local_images_env.is_file():
        logger.info("using the local images named in %s", local_images_env)
        own_env = REPO / ".env"  # --env-file replaces compose's default .env: keep it
        if own_env.is_file():
            command += ["--env-file", str(own_env)]
        command += ["--env-file", str(local_images_env)]
    if cluster:
        command += ["--profile", "cluster"]
    return [*command, "up", "--build"]


def main(
    cluster: bool = typer.Option(False, "--cluster", help="Three broker nodes in one cluster."),
) -> None:
    """Start Messenger on this machine: broker, auth service and relay, until Ctrl-C."""
    configure_logging()
    settings = load_settings()
    if settings.docker and compose_available():
        logger.info("a Docker engine answers: running docker compose up")
        command, env = compose_command(cluster, LOCAL_IMAGES_ENV), dict(os.environ)
        if cluster:  # the profile's two extra nodes, quorum queues, failover to every node
            for name, value in CLUSTER_COMPOSE_ENV.items():
                env.setdefault(name, value)
        raise typer.Exit(subprocess.call(command, cwd=REPO, env=env))
    try:
        run_local(settings, cluster=cluster)
    except StartFailed as exc:
        logger.error("could not start Messenger: %s", exc)
        raise typer.Exit(1) from None
    except RunFailed as exc:
        logger.error("Messenger stopped: %s", exc)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    typer.run(main)
