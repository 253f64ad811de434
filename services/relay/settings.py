"""The relay's settings, all from MESSENGER_RELAY_* environment variables."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.topology import VHOST


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESSENGER_RELAY_")

    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    vhost: str = VHOST
    amqp_user: str = "relay"
    amqp_password: SecretStr

    # Unacked outbox messages per shard consumer: the window of inbox publishes awaiting
    # confirms. Large enough to keep the broker busy, small enough to bound redelivery.
    prefetch: int = 512
    reconnect_max_delay_seconds: float = 10.0
    shutdown_grace_seconds: float = 10.0

    log_level: str = "INFO"
