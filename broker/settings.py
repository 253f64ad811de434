"""The broker settings both services read, each under its own prefix.

`MESSENGER_RELAY_AMQP_HOST` and `MESSENGER_AUTH_AMQP_HOST` are the same field of this class,
read by `RelaySettings` and `AuthSettings` (each sets its `env_prefix` and the default
`amqp_user`, its broker account).
"""

from __future__ import annotations

from typing import Annotated

import pika
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode

from broker.nodes import parse_nodes
from broker.params import Node, connection_parameters
from protocol.topology import VHOST


class BrokerSettings(BaseSettings):
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    # The nodes of a cluster, `host:port,host:port,...`, in order of preference; empty:
    # amqp_host:amqp_port alone.
    amqp_nodes: Annotated[list[tuple[str, int]], NoDecode] = []
    vhost: str = VHOST
    amqp_user: str
    amqp_password: SecretStr

    @field_validator("amqp_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: object) -> object:
        return parse_nodes(value) if isinstance(value, str) else value

    def broker_nodes(self) -> list[Node]:
        """Where the service connects, in order of preference."""
        return list(self.amqp_nodes) or [(self.amqp_host, self.amqp_port)]

    def connection_parameters(
        self,
        node: Node,
        *,
        name: str,
        heartbeat: int | None = None,
        blocked_connection_timeout: float | None = None,
        stack_timeout: float | None = None,
    ) -> pika.ConnectionParameters:
        """How this service logs in to `node`, as its own broker account."""
        return connection_parameters(
            node,
            vhost=self.vhost,
            username=self.amqp_user,
            password=self.amqp_password.get_secret_value(),
            name=name,
            heartbeat=heartbeat,
            blocked_connection_timeout=blocked_connection_timeout,
            stack_timeout=stack_timeout,
        )
