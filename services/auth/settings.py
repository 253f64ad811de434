"""The auth service's settings, all from MESSENGER_AUTH_* environment variables."""

from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from protocol.nodes import parse_amqp_url, parse_nodes
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
    # When set, the broker API answers only under /<key>/broker/*: only whoever holds the key
    # (the broker, from its config) gets an answer. `make run` sets a fresh one per run.
    broker_api_key: SecretStr | None = None

    # How this service reaches the broker (as the `auth` service account) to declare inboxes.
    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    # The nodes of a cluster, `host:port,host:port,...`, tried in turn; empty: the one above.
    amqp_nodes: Annotated[list[tuple[str, int]], NoDecode] = []
    vhost: str = VHOST
    amqp_user: str = "auth"
    amqp_password: SecretStr
    inbox_queue_type: Literal["classic", "quorum"] = "classic"

    # What GET /v1/meta tells clients: where they reach the broker themselves.
    public_amqp_url: str = "amqp://127.0.0.1:5672"
    # Every node's URL, comma-separated (`amqp_urls` in GET /v1/meta); empty: the one above.
    public_amqp_urls: Annotated[list[str], NoDecode] = []

    token_ttl_seconds: int = 7 * 24 * 3600

    # Failed logins (API and broker) allowed per window, per username and per client address.
    login_failures_per_user: int = 10
    login_failures_per_address: int = 50
    login_failure_window_seconds: int = 300

    # argon2id cost; hashes made with other parameters are upgraded at the next login.
    # OWASP's first recommended set (19 MiB, 2 passes, 1 lane): one verification takes about
    # 20 ms on the 2-core reference machine. Logins queue for the cores (20 at once take
    # 20 x 20 ms / 2 cores), so a costlier hash trades login latency under load for
    # resistance to offline guessing; 64 MiB x 2 passes x 2 lanes measured 65 ms here.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_parallelism: int = 1
    # At most this many hashes at once (each holds argon2_memory_kib); None = CPU count.
    max_concurrent_hashes: int | None = None

    # Request bodies above this size are refused with 413 before they are parsed.
    max_body_bytes: int = 64 * 1024

    log_level: str = "INFO"

    @field_validator("amqp_nodes", mode="before")
    @classmethod
    def _split_nodes(cls, value: object) -> object:
        return parse_nodes(value) if isinstance(value, str) else value

    @field_validator("public_amqp_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        if isinstance(value, list):
            for url in value:
                parse_amqp_url(str(url))
        return value

    def broker_nodes(self) -> list[tuple[str, int]]:
        """Where this service connects, in order of preference."""
        return list(self.amqp_nodes) or [(self.amqp_host, self.amqp_port)]

    def client_amqp_urls(self) -> list[str]:
        """What GET /v1/meta announces: every node's public URL, in order."""
        return list(self.public_amqp_urls) or [self.public_amqp_url]
