"""The archive service's settings, all from MESSENGER_ARCHIVE_* environment variables."""

from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from broker.settings import BrokerSettings


def _default_database_url() -> str:
    path = platformdirs.user_data_path("messenger-archive") / "archive.sqlite3"
    return f"sqlite:///{path}"


class ArchiveSettings(BrokerSettings):
    """The broker fields (AMQP_HOST, AMQP_PORT, AMQP_NODES, VHOST, AMQP_USER, AMQP_PASSWORD:
    how the archive consumes `archive.ingest`, as the broker account `archive`) come from
    BrokerSettings."""

    model_config = SettingsConfigDict(env_prefix="MESSENGER_ARCHIVE_")

    amqp_user: str = "archive"

    # SQLite by default; PostgreSQL by URL (postgresql://user@host/db: the psycopg driver).
    database_url: str = Field(default_factory=_default_database_url)

    # The history API: internal, only the auth service asks it (with the shared key).
    host: str = "127.0.0.1"
    port: int = 8082
    key: SecretStr

    # Ingest: up to `batch_size` messages per transaction, committed after `batch_wait`
    # seconds of quiet at the latest, then acked at once.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_wait_seconds: float = Field(default=0.05, gt=0)
    reconnect_max_delay_seconds: float = 10.0

    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    def sqlite_path(self) -> Path | None:
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url.removeprefix("sqlite:///"))
        return None
