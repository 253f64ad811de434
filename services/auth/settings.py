"""The auth service's settings, all from MESSENGER_AUTH_* environment variables."""

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from broker.nodes import parse_amqp_url
from broker.settings import BrokerSettings


def _default_db_path() -> Path:
    return platformdirs.user_data_path("messenger-auth") / "users.sqlite3"


def _default_web_dir() -> Path:
    """The committed front-end build of a source checkout (the image sets its own)."""
    return Path(__file__).resolve().parents[2] / "web" / "dist"


class AuthSettings(BrokerSettings):
    """The broker fields (AMQP_HOST, AMQP_PORT, AMQP_NODES, VHOST, AMQP_USER, AMQP_PASSWORD:
    how this service reaches the broker to declare inboxes) come from BrokerSettings."""

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

    amqp_user: str = "auth"
    inbox_queue_type: Literal["classic", "quorum"] = "classic"

    # What GET /v1/meta tells clients: where they reach the broker themselves.
    public_amqp_url: str = "amqp://127.0.0.1:5672"
    # Every node's URL, comma-separated (`amqp_urls` in GET /v1/meta); empty: the one above.
    public_amqp_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)

    token_ttl_seconds: int = 7 * 24 * 3600

    # The brokers' management HTTP API (comma-separated, tried in turn): logout closes the
    # session's AMQP connections at once, and every `session_sweep_seconds` the connections
    # of expired or revoked sessions are closed (services/auth/connections.py). Empty: off.
    management_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    session_sweep_seconds: float = 5.0

    # The web client on the public listener (services/auth/web.py): the built page, and the
    # broker's Web STOMP listener(s) `/ws` is proxied to, tried in turn (each node of a
    # cluster), comma-separated.
    web_dir: Path | None = Field(default_factory=_default_web_dir)
    web_stomp_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ws://127.0.0.1:15674/ws"]
    )

    # Failed logins (services/auth/ratelimit.py). Per (username, address): the first
    # `login_free_failures` cost nothing, then each one doubles the wait before the next try
    # (from `login_base_delay_seconds` up to `login_max_delay_seconds`). An address that
    # logged in to the account within `login_known_address_days` is held by that delay only;
    # any other is also refused once the username (from anywhere) or the address (over all
    # names, existing or not) has this many failures in the window.
    login_free_failures: int = 5
    login_base_delay_seconds: float = 1.0
    login_max_delay_seconds: float = 600.0
    login_known_address_days: float = 30.0
    login_failures_per_user: int = 10
    login_failures_per_address: int = 50
    login_failure_window_seconds: int = 300
    # Broker logins with a password (not a token) verified per second, all names together,
    # and the burst allowed; beyond it they are refused without running argon2.
    broker_password_checks_per_second: float = 5.0
    broker_password_checks_burst: int = 20

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

    @field_validator("public_amqp_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        if isinstance(value, list):
            for url in value:
                parse_amqp_url(str(url))
        return value

    @field_validator("management_urls", mode="before")
    @classmethod
    def _split_management_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        if isinstance(value, list):
            for url in value:
                if urlsplit(str(url)).scheme not in ("http", "https"):
                    raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return value

    @field_validator("web_stomp_urls", mode="before")
    @classmethod
    def _split_ws_urls(cls, value: object) -> object:
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        if isinstance(value, list):
            for url in value:
                if urlsplit(str(url)).scheme not in ("ws", "wss"):
                    raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
        return value

    def client_amqp_urls(self) -> list[str]:
        """What GET /v1/meta announces: every node's public URL, in order."""
        return list(self.public_amqp_urls) or [self.public_amqp_url]
