"""The auth service's settings, all from MESSENGER_AUTH_* environment variables."""

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.topology import VHOST


def _default_db_path() -> Path:
    return platformdirs.user_data_path("messenger-auth") / "users.sqlite3"


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESSENGER_AUTH_")

    db_path: Path = Field(default_factory=_default_db_path)

    # The public account API (published) and the broker's auth-backend API (never published).
    public_host: str = "127.0.0.1"
    public_port: int = 8080
    broker_api_host: str = "127.0.0.1"
    broker_api_port: int = 8081

    # How this service reaches the broker (as the `auth` service account) to declare inboxes.
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    vhost: str = VHOST
    amqp_user: str = "auth"
    amqp_password: SecretStr
    inbox_queue_type: Literal["classic", "quorum"] = "classic"

    # What GET /v1/meta tells clients: where they reach the broker themselves.
    public_amqp_url: str = "amqp://127.0.0.1:5672"

    token_ttl_seconds: int = 7 * 24 * 3600

    # Failed logins (API and broker) allowed per window, per username and per client address.
    login_failures_per_user: int = 10
    login_failures_per_address: int = 50
    login_failure_window_seconds: int = 300

    # argon2id cost; hashes made with other parameters are upgraded at the next login.
    # Measured on the 2-core reference machine: one verification takes about 65 ms.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 64 * 1024
    argon2_parallelism: int = 2
    # At most this many hashes at once (each holds argon2_memory_kib); None = CPU count.
    max_concurrent_hashes: int | None = None

    # Request bodies above this size are refused with 413 before they are parsed.
    max_body_bytes: int = 64 * 1024

    log_level: str = "INFO"
