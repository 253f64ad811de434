"""The relay's settings, all from MESSENGER_RELAY_* environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from broker.settings import BrokerSettings


class RelaySettings(BrokerSettings):
    """The broker fields (AMQP_HOST, AMQP_PORT, AMQP_NODES, VHOST, AMQP_USER, AMQP_PASSWORD)
    come from BrokerSettings; with several nodes the relay uses one at a time and moves to
    the next when it goes."""

    model_config = SettingsConfigDict(env_prefix="MESSENGER_RELAY_")

    amqp_user: str = "relay"

    # Unacked outbox messages per shard consumer: the window of inbox publishes awaiting
    # confirms. Large enough to keep the broker busy, small enough to bound redelivery.
    prefetch: int = 512
    reconnect_max_delay_seconds: float = 10.0
    # A message for an inbox that exists but cannot take it now (its node is down) is held
    # and published again after 0.5, 1, 2 ... seconds, at most this far apart.
    retry_max_delay_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0

    # Rate limits (rate_limits.py): a token bucket per sender, one per (sender, recipient)
    # and one for each sender's receipts, each `rate` messages a second after a burst of
    # `burst`. The excess is answered `rejected: rate_limited`. A rate of 0: no limit.
    sender_rate: float = Field(default=20.0, ge=0)
    sender_burst: int = Field(default=200, ge=1)
    recipient_rate: float = Field(default=10.0, ge=0)
    recipient_burst: int = Field(default=100, ge=1)
    receipt_rate: float = Field(default=100.0, ge=0)
    receipt_burst: int = Field(default=2000, ge=1)

    # Where the relay keeps a JSON status (state, counters; status.py) up to date, for
    # readiness checks and monitoring; unset: nowhere. Rewritten at most this often.
    status_file: Path | None = None
    status_interval_seconds: float = 1.0

    log_level: str = "INFO"
