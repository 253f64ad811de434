"""Account rules and the bodies of the public account API.

A username becomes a queue name (`inbox.<username>`) and a routing key, so its alphabet is
narrow on purpose.
"""

import hashlib
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from protocol.wire import WireModel

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,31}$")
RESERVED_USERNAMES = frozenset({"guest", "admin", "relay", "auth", "archive", "system"})
DISPLAY_NAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
# Control, format, surrogate, private-use and unassigned code points, line/paragraph breaks.
FORBIDDEN_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def check_username(value: str) -> str:
    """Return `value` if it is a legal, unreserved username; raise ValueError saying why not."""
    if not isinstance(value, str):
        raise ValueError("username must be a string")
    if not 3 <= len(value) <= 32:
        raise ValueError("username must be 3 to 32 characters long")
    if value != value.lower():
        raise ValueError("username must be lowercase")
    if not USERNAME_RE.fullmatch(value):  # not match(): `$` also matches before a final \n
        raise ValueError(
            "username may hold only a-z, 0-9, '_', '.', '-' and must start with a letter or digit"
        )
    if value in RESERVED_USERNAMES:
        raise ValueError(f"username '{value}' is reserved")
    return value


def is_valid_username(value: str) -> bool:
    try:
        check_username(value)
    except ValueError:
        return False
    return True


def check_display_name(value: str) -> str:
    """Printable characters only: emoji and accents yes, control or format characters no."""
    if not 1 <= len(value) <= DISPLAY_NAME_MAX:
        raise ValueError(f"display name must be 1 to {DISPLAY_NAME_MAX} characters long")
    for char in value:
        if unicodedata.category(char) in FORBIDDEN_IN_NAMES:
            raise ValueError(f"display name must not contain the character U+{ord(char):04X}")
    if not value.strip():
        raise ValueError("display name must not be blank")
    return value


def check_password(value: str) -> str:
    if len(value) < PASSWORD_MIN:
        raise ValueError(f"password must be at least {PASSWORD_MIN} characters long")
    if len(value) > PASSWORD_MAX:
        raise ValueError(f"password must be at most {PASSWORD_MAX} characters long")
    return value


# A client names its AMQP connection after the session that opened it, so that the auth
# service can close the connections of a session that ends (logout, revocation, expiry). The
# name holds a hash of a hash of the token, never the token: the auth service, which stores
# only SHA-256(token), computes the same tag, and nobody can go from the tag back to a token.
CONNECTION_NAME_PREFIX = "messenger client"
CONNECTION_NAME_RE = re.compile(r"messenger client (\S{1,64}) ([0-9a-f]{16})")


def session_tag_of_hash(token_sha256_hex: str) -> str:
    """The 16-hex tag of a session, from the SHA-256 (hex) of its token."""
    return hashlib.sha256(b"messenger connection\0" + token_sha256_hex.encode()).hexdigest()[:16]


def connection_name(username: str, token: str) -> str:
    """`messenger client <username> <tag>`: the AMQP `connection_name` of a session."""
    token_sha256 = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{CONNECTION_NAME_PREFIX} {username} {session_tag_of_hash(token_sha256)}"


def parse_connection_name(name: object) -> tuple[str, str] | None:
    """(username, tag) of a session's connection name, or None for any other name."""
    if not isinstance(name, str):
        return None
    match = CONNECTION_NAME_RE.fullmatch(name)
    return (match[1], match[2]) if match else None


# The JSON schemas below say exactly what the checks above accept, so the OpenAPI document
# of the account API is true (tests/integration/test_auth_schema.py holds it to that).


def _username_schema(schema: dict[str, Any]) -> None:
    schema.update(
        description="3 to 32 of a-z 0-9 _ . -, starting with a letter or digit; not reserved",
        pattern=USERNAME_RE.pattern,
        minLength=3,
        maxLength=32,
    )
    schema["not"] = {"enum": sorted(RESERVED_USERNAMES)}


def _display_name_schema(schema: dict[str, Any]) -> None:
    # "Printable" is a rule over Unicode categories: as a regex it is 700 ranges (and slow
    # for any tool to generate from), so it is a named format, defined in the description.
    schema.update(
        description=(
            f"1 to {DISPLAY_NAME_MAX} printable characters, not all blank: no code point of the"
            f" Unicode categories {', '.join(sorted(FORBIDDEN_IN_NAMES))} (control, format,"
            " surrogate, private use, unassigned, line and paragraph separator)"
        ),
        format="display-name",
        minLength=1,
        maxLength=DISPLAY_NAME_MAX,
    )


def _password_schema(schema: dict[str, Any]) -> None:
    schema.update(minLength=PASSWORD_MIN, maxLength=PASSWORD_MAX)


Username = Annotated[str, AfterValidator(check_username), Field(json_schema_extra=_username_schema)]
DisplayName = Annotated[
    str, AfterValidator(check_display_name), Field(json_schema_extra=_display_name_schema)
]
Password = Annotated[str, AfterValidator(check_password), Field(json_schema_extra=_password_schema)]


class SignupRequest(WireModel):
    username: Username
    display_name: DisplayName
    password: Password


class LoginRequest(WireModel):
    # Not validated as a Username: a malformed name must get the same 401 as a wrong one.
    username: str = Field(max_length=256)
    password: str = Field(max_length=PASSWORD_MAX)


class UserPublic(WireModel):
    username: str
    display_name: str


class Session(WireModel):
    token: str
    expires_at: datetime


class SessionInfo(WireModel):
    """`GET /v1/sessions/current`: whose session a token is, and until when. A client asks
    it to tell a revoked session (401) from a broker that could not check the login."""

    username: str
    expires_at: datetime


class Meta(WireModel):
    """`GET /v1/meta`: where clients reach the broker.

    `amqp_urls` lists every node of a cluster, in the order clients try them; `amqp_url` is
    its first entry, kept for clients that know only one address (they ignore the list).
    """

    protocol_version: int
    amqp_url: str
    vhost: str
    amqp_urls: list[str] = Field(default_factory=list)

    def broker_urls(self) -> list[str]:
        """The nodes to try, in order: `amqp_urls`, or just `amqp_url` from an older server."""
        return list(self.amqp_urls) or [self.amqp_url]
