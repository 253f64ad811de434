"""`make run`: the whole system on this machine until Ctrl-C.

With a Docker engine, it is `docker compose up`. Without one, a private RabbitMQ node from
the installed `rabbitmq-server`, the auth service and the relay run as local processes. The
node's data and the user store live in one directory that survives restarts, so accounts
and waiting messages are still there next time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType

import httpx
import platformdirs
import typer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.local_broker import BrokerError, LocalNode, free_port, service_passwords
from deploy.local_cluster import LocalCluster
from deploy.processes import ServiceProcess
from services.logs import configure_logging

logger = logging.getLogger("messenger.run")

REPO = Path(__file__).resolve().parent.parent

# `make run CLUSTER=1` with Docker: compose's `cluster` profile, quorum queues, and every
# node for the services (on the deployment's network) and for clients (published ports).
CLUSTER_COMPOSE_ENV = {
    "MESSENGER_QUEUE_TYPE": "quorum",
    "MESSENGER_INBOX_QUEUE_TYPE": "quorum",
    "MESSENGER_BROKER_NODES": "broker:5672,broker-2:5672,broker-3:5672",
    "MESSENGER_PUBLIC_AMQP_URLS": "amqp://127.0.0.1:5672,amqp://127.0.0.1:5673,amqp://127.0.0.1:5674",
    "MESSENGER_WEB_STOMP_URLS": "ws://broker:15674/ws,ws://broker-2:15674/ws,ws://broker-3:15674/ws",
}


def _default_data_dir() -> Path:
    """Root's home is closed to the `rabbitmq` user the broker runs as: use /var/lib then."""
    if os.geteuid() == 0:
        return Path("/var/lib/messenger/local-run")
    return platformdirs.user_data_path("messenger") / "local-run"


class RunSettings(BaseSettings):
    """`make run`'s knobs, from MESSENGER_RUN_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="MESSENGER_RUN_")

    data_dir: Path = Field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    public_port: int = 8080
    amqp_port: int = 0  # 0: any free port (5672 may belong to another broker)
    relays: int = 1
    docker: bool = True  # use docker compose when a Docker engine answers


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


def _wait_healthy(url: str, service: ServiceProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive:
            raise RuntimeError("the auth service exited during start-up (see its log above)")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the auth service did not answer on {url} within {timeout:.0f}s")


def run_local(settings: RunSettings, cluster: bool = False) -> None:
    """Broker, auth, relays as local processes; returns after Ctrl-C has stopped them all.

    With `cluster`, the broker is three nodes joined into one cluster (deploy/local_cluster.py)
    with quorum outbox shards and, unless MESSENGER_AUTH_INBOX_QUEUE_TYPE says otherwise,
    quorum inboxes. Its data (and its own user store) live in `<data_dir>/cluster`.
    """
    if cluster:
        settings = settings.model_copy(update={"data_dir": settings.data_dir / "cluster"})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    passwords = service_passwords()  # fresh each run: definitions.json re-imports them at boot
    broker_api_port = free_port()
    broker: LocalNode | LocalCluster
    node: LocalNode
    if cluster:
        first_port = settings.amqp_port
        broker = LocalCluster(
            auth_url=f"http://127.0.0.1:{broker_api_port}",
            service_passwords=passwords,
            base_dir=settings.data_dir / "rabbitmq",
            name_prefix="messenger-local",  # stable: messenger-local-{1,2,3}@localhost
            amqp_ports=[first_port + i for i in range(3)] if first_port else (),
            host=settings.host,
        )
        node = broker.nodes[0]
        inbox_queue_type = os.environ.get("MESSENGER_AUTH_INBOX_QUEUE_TYPE", "quorum")
    else:
        broker = node = LocalNode(
            auth_url=f"http://127.0.0.1:{broker_api_port}",
            service_passwords=passwords,
            data_dir=settings.data_dir / "rabbitmq",
            amqp_port=settings.amqp_port or free_port(),
            name="messenger-local@localhost",  # stable: the node's data is kept under its name
            host=settings.host,
        )
        inbox_queue_type = os.environ.get("MESSENGER_AUTH_INBOX_QUEUE_TYPE", "classic")
    nodes = broker.nodes if isinstance(broker, LocalCluster) else [node]
    amqp_nodes = ",".join(f"{n.host}:{n.amqp_port}" for n in nodes)
    public_url = f"http://{settings.host}:{settings.public_port}"
    services: list[ServiceProcess] = []
    try:
        broker.start()
        auth = ServiceProcess(
            module="services.auth",
            args=["serve"],
            env={
                "MESSENGER_AUTH_DB_PATH": str(settings.data_dir / "users.sqlite3"),
                "MESSENGER_AUTH_PUBLIC_HOST": settings.host,
                "MESSENGER_AUTH_PUBLIC_PORT": str(settings.public_port),
                "MESSENGER_AUTH_BROKER_API_HOST": "127.0.0.1",
                "MESSENGER_AUTH_BROKER_API_PORT": str(broker_api_port),
                "MESSENGER_AUTH_AMQP_NODES": amqp_nodes,
                "MESSENGER_AUTH_AMQP_PASSWORD": passwords["auth"],
                "MESSENGER_AUTH_PUBLIC_AMQP_URL": node.public_amqp_url,
                "MESSENGER_AUTH_PUBLIC_AMQP_URLS": ",".join(n.public_amqp_url for n in nodes),
                "MESSENGER_AUTH_INBOX_QUEUE_TYPE": inbox_queue_type,
                "MESSENGER_AUTH_WEB_STOMP_URLS": ",".join(n.web_stomp_url for n in nodes),
            },
        )
        auth.start()
        services.append(auth)
        _wait_healthy(public_url, auth)
        for _ in range(settings.relays):
            relay = ServiceProcess(
                module="services.relay",
                args=[],
                env={
                    "MESSENGER_RELAY_AMQP_NODES": amqp_nodes,
                    "MESSENGER_RELAY_AMQP_PASSWORD": passwords["relay"],
                },
            )
            relay.start()
            services.append(relay)
        logger.info(
            "Messenger is up: web and API %s/, broker %s, data in %s. Ctrl-C stops everything.",
            public_url,
            ", ".join(n.public_amqp_url for n in nodes),
            settings.data_dir,
        )
        while not stop.wait(0.5):
            dead = [s for s in services if not s.alive]
            if dead:
                logger.error("%s exited; stopping everything", dead[0].module)
                break
    finally:
        logger.info("stopping")
        for service in reversed(services):
            service.stop()
        broker.stop()
        logger.info("stopped")


def main(
    cluster: bool = typer.Option(False, "--cluster", help="Three broker nodes in one cluster."),
) -> None:
    """Start Messenger on this machine: broker, auth service and relay, until Ctrl-C."""
    configure_logging()
    settings = RunSettings()
    if settings.docker and _docker_engine_answers():
        logger.info("a Docker engine answers: running docker compose up")
        command, env = ["docker", "compose", "up", "--build"], dict(os.environ)
        if cluster:  # the profile's two extra nodes, quorum queues, failover to every node
            command[2:2] = ["--profile", "cluster"]
            for name, value in CLUSTER_COMPOSE_ENV.items():
                env.setdefault(name, value)
        raise typer.Exit(subprocess.call(command, cwd=REPO, env=env))
    try:
        run_local(settings, cluster=cluster)
    except (BrokerError, RuntimeError, OSError) as exc:
        logger.error("could not start Messenger: %s", exc)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    typer.run(main)
