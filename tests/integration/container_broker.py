"""The broker in a container, for machines where a Docker engine answers.

The same rendered files as the local node (deploy/rabbitmq/ plus this run's ports, auth URL
and service passwords) are mounted at /etc/rabbitmq of the official image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testcontainers.rabbitmq import RabbitMqContainer

from deploy.local_broker import START_TIMEOUT, BrokerError, LocalNode
from protocol.topology import VHOST

IMAGE = "rabbitmq:3.13"
CONFIG_IN_CONTAINER = Path("/etc/rabbitmq")


class ContainerNode(LocalNode):
    _container: Any = None

    def __post_init__(self) -> None:
        self.chown_to_rabbitmq = False

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._write_files()
        # Its readiness check logs in with these: the relay account from definitions.json.
        container = RabbitMqContainer(
            IMAGE,
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
        container.start()
        self._container = container

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop()
            self._container = None

    def kill(self) -> None:
        if self._container is not None:
            self._container.get_wrapped_container().kill()
            self._container = None

    def ctl(self, *args: str, timeout: float = 60) -> str:
        exit_code, output = self._container.exec(["rabbitmqctl", *args])
        if exit_code != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: {output.decode().strip()}")
        return str(output.decode())

    def _listener(self) -> str:
        return "5672"

    def _web_stomp_listener(self) -> list[str]:
        return ["web_stomp.tcp.port = 15674"]

    def _path_seen_by_broker(self, path: Path) -> Path:
        return CONFIG_IN_CONTAINER / path.name

    @property
    def running(self) -> bool:
        return self._container is not None
