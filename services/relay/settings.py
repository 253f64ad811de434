"""The relay's settings, all from MESSENGER_RELAY_* environment variables."""

from typing import Annotated

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from protocol.nodes import parse_nodes
from protocol.topology import VHOST


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESSENGER_RELAY_")

    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    # The nodes of a cluster, `host:port,host:port,...`: the relay uses one at a time and
    # moves to the next when it goes. Empty: amqp_host:amqp_port alone.
    amqp_nodes: Annotated[list[tuple[str, int]], NoDecode] = []
    vhost: str = VHOST
    amqp_user: str = "relay"
    amqp_password: SecretStr

    # Unacked outbox messages per shard consumer: the window of inbox publishes awaiting
    # confirms. Large enough to keep the broker busy, small enough to bound redelivery.
    prefetch: int = 512
    reconnect_max_delay_seconds: float = 10.0
    # A message for an inbox that exists but cannot take it now (its node is down) is held
    # and published again after 0.5, 1, 2 ... seconds, at most this far apart.
    retry_max_delay_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0

    log_level: str = "INFO"

    @field_validator("amqp_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: object) -> object:
        return parse_nodes(value) if isinstance(value, str) else value

    def broker_nodes(self) -> list[tuple[str, int]]:
        """Where the relay connects, in order of preference."""
        return list(self.amqp_nodes) or [(self.amqp_host, self.amqp_port)]
