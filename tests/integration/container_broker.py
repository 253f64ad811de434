"""The broker in a container (testcontainers' RabbitMQ), for machines where a Docker engine
answers, and the choice between it and a private local node.

MESSENGER_TEST_BROKER picks the kind: `local` (a private node of the installed
rabbitmq-server, 3.10.8 on Debian 12), `container` (RabbitMQ 4 in a container; an error when
no engine answers), or `auto` (the default: a container when an engine answers and the image
is on this machine, else a local node). MESSENGER_RABBITMQ_IMAGE names the image, as it does
for compose.yaml (default: the official rabbitmq:4.1; deploy/images/build-local.sh builds a
local stand-in where no registry is reachable, and its local.env names it).

The same rendered files as the local node (deploy/rabbitmq/ plus this run's auth URL and
service passwords) are mounted in /etc/rabbitmq. On top, every feature RabbitMQ 4 has
deprecated is denied, as later 4.x releases do by default: a test that leans on one fails here.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deploy.local_broker import START_TIMEOUT, BrokerError, LocalNode
from protocol.topology import VHOST

OFFICIAL_IMAGE = "rabbitmq:4.1"
CONFIG_IN_CONTAINER = Path("/etc/rabbitmq")
BrokerKind = Literal["local", "container"]
KINDS = ("local", "container", "auto")

# Denied by default (or removed) in later RabbitMQ 4 releases; deny them now so that nothing
# of ours depends on one. RabbitMQ 3.10 does not know these keys: containers only.
DENY_DEPRECATED_FEATURES = "\n".join(
    f"deprecated_features.permit.{feature} = false"
    for feature in (
        "global_qos",
        "transient_nonexcl_queues",
        "queue_master_locator",
        "ram_node_type",
    )
)

# testcontainers reads these when it is imported. Ryuk (its reaper) is an image from a
# registry; the fixtures remove their own containers. `docker_host`: talk to the published
# port on the engine's host (this machine), not to a bridge address testcontainers guesses.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


def broker_image() -> str:
    return os.environ.get("MESSENGER_RABBITMQ_IMAGE") or OFFICIAL_IMAGE


@dataclass(frozen=True)
class BrokerChoice:
    kind: BrokerKind
    reason: str


def _engine() -> Any:
    """A client of the Docker engine, or None when none answers."""
    # docker-py leaks its unix socket when no engine answers; under `filterwarnings = error`
    # the ResourceWarning at garbage collection would fail whichever test runs then.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=5)
            client.ping()
            return client
        except Exception:
            return None
        finally:
            gc.collect()


def choose_broker() -> BrokerChoice:
    """Which broker the suite runs on, and why (printed in pytest's header)."""
    wanted = os.environ.get("MESSENGER_TEST_BROKER", "auto").strip().lower() or "auto"
    if wanted not in KINDS:
        raise BrokerError(f"MESSENGER_TEST_BROKER={wanted!r}: use one of {', '.join(KINDS)}")
    if wanted == "local":
        return BrokerChoice("local", "MESSENGER_TEST_BROKER=local")
    engine = _engine()
    if engine is None:
        if wanted == "container":
            raise BrokerError(
                "MESSENGER_TEST_BROKER=container, but no Docker engine answers "
                f"(DOCKER_HOST={os.environ.get('DOCKER_HOST', 'default')})"
            )
        return BrokerChoice("local", "no Docker engine answers")
    image = broker_image()
    with contextlib.closing(engine):
        present = bool(engine.images.list(name=image))
    if wanted == "container":
        return BrokerChoice("container", f"MESSENGER_TEST_BROKER=container, image {image}")
    if not present:
        return BrokerChoice(
            "local",
            f"a Docker engine answers but image {image} is not on this machine "
            "(deploy/images/build-local.sh builds one; MESSENGER_RABBITMQ_IMAGE names it)",
        )
    return BrokerChoice("container", f"a Docker engine answers, image {image}")


@functools.cache
def chosen_broker() -> BrokerChoice:
    """The choice, made once per test run."""
    return choose_broker()


@dataclass
class ContainerNode(LocalNode):
    """A RabbitMQ node in a container. Stop, kill and start act on the same container, so
    its data survives a restart as a node's would; `remove` deletes it and its volume."""

    _container: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.chown_to_rabbitmq = False
        self.extra_config = "\n".join(
            [self.extra_config, "log.console = true", "log.file = false", DENY_DEPRECATED_FEATURES]
        )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self._container is not None:  # stopped or killed: the same container again
            self._container.get_wrapped_container().start()
            self._wait_until_ready(timeout)
            return
        self._write_files()
        # The container's user (uid 999) reads these through bind mounts; the directory
        # that holds them stays private to this user.
        for name in ("rabbitmq.conf", "enabled_plugins", "definitions.json"):
            (self.data_dir / name).chmod(0o644)
        from testcontainers.community.rabbitmq import RabbitMqContainer  # pinned: see pyproject

        # Its readiness check logs in with these: the relay account from definitions.json.
        container = RabbitMqContainer(
            broker_image(),
            port=5672,
            vhost=VHOST,
            username="relay",
            password=self.service_passwords["relay"],
        )
        for name in ("rabbitmq.conf", "enabled_plugins", "definitions.json"):
            container.with_volume_mapping(
                str(self.data_dir / name), str(CONFIG_IN_CONTAINER / name)
            )
        container.with_kwargs(extra_hosts={"host.docker.internal": "host-gateway"})
        container.with_bind_ports(5672, self.amqp_port)
        container.with_bind_ports(15674, self.web_stomp_port)
        container.with_bind_ports(15672, self.management_port)
        try:
            container.start()
        except BaseException:
            container.stop()
            raise
        self._container = container

    def stop(self) -> None:
        """A graceful stop (SIGTERM, as `docker stop`); the container stays for `start`."""
        if self._container is not None and self.running:
            self._container.get_wrapped_container().stop(timeout=30)

    def kill(self) -> None:
        """SIGKILL, as `docker kill`: the crash a reliability test wants."""
        if self._container is not None and self.running:
            self._container.get_wrapped_container().kill()
            self._container.get_wrapped_container().wait(timeout=30)

    def remove(self) -> None:
        if self._container is not None:
            self._container.stop()  # testcontainers' stop: remove with its volumes
            self._container = None
        super().remove()  # the rendered files

    def run_cli(self, tool: str, *args: str, timeout: float = 60) -> str:
        """`docker exec` one of RabbitMQ's CLI tools in the container (as root, as
        `docker compose exec` would): its standard output."""
        if self._container is None:
            raise BrokerError(f"{tool}: the broker container is not started")
        exit_code, (out, err) = self._container.get_wrapped_container().exec_run(
            [tool, *args], demux=True
        )
        if exit_code != 0:
            detail = (err or out or b"").decode().strip()
            raise BrokerError(f"{tool} {' '.join(args)}: {detail}")
        return (out or b"").decode()

    def beam_pid(self) -> int | None:
        return None

    def _listener(self) -> str:
        return "5672"

    def _web_stomp_listener(self) -> list[str]:
        return ["web_stomp.tcp.port = 15674"]

    def _management_listener(self) -> list[str]:
        return ["management.tcp.port = 15672"]

    def _path_seen_by_broker(self, path: Path) -> Path:
        return CONFIG_IN_CONTAINER / path.name

    @property
    def running(self) -> bool:
        if self._container is None:
            return False
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")
