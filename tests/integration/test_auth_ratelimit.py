"""Failed logins are throttled, never locked: a delay per (username, address), budgets for
strangers, and an address that logged in before keeps working (services/auth/ratelimit.py).

All tests talk from loopback; a second source address (127.0.0.2, also loopback on Linux)
plays the stranger.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local_broker import free_port
from tests.integration.stack import (
    AuthService,
    Broker,
    close_quietly,
    eventually,
    login_refused,
    signup_and_login,
    start_auth,
    unique_username,
)

PER_USER = 10  # the service default, which the test stack keeps
FREE_FAILURES = 5  # per (username, address), the service default
STRANGER = "127.0.0.2"
BASE_DELAY = 5


def login(
    auth: AuthService, username: str, password: str, source: str | None = None
) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(
            f"{auth.url}/v1/sessions", json={"username": username, "password": password}
        )


def test_a_stranger_guessing_does_not_keep_the_user_out_of_an_address_known_to_work(
    auth: AuthService, broker: Broker
):
    user = signup_and_login(auth)  # logs in from 127.0.0.1: that address is known for it
    for n in range(PER_USER):  # one guess from each of many addresses
        attacker = f"127.0.0.{100 + n}"
        assert login(auth, user.username, "wrong password", source=attacker).status_code == 401
    # The name's budget for strangers is spent: the right password from elsewhere waits,
    # and so does the broker path (it has no address: always a stranger) ...
    assert login_refused(broker, user.username, user.password)
    limited = login(auth, user.username, user.password, source=STRANGER)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # ... while the user's own address logs in, and the session it holds keeps working.
    assert login(auth, user.username, user.password).status_code == 200
    close_quietly(broker.connect(user.username, user.token))


def test_failed_broker_logins_are_throttled_like_any_other(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    for _ in range(FREE_FAILURES + 1):
        assert login_refused(broker, user.username, "wrong password")
    # The broker's pair (this name, no address) now waits: even the password is refused ...
    assert login_refused(broker, user.username, user.password)
    # ... while the user's token, and the password from the user's own address, still work.
    close_quietly(broker.connect(user.username, user.token))
    assert login(auth, user.username, user.password).status_code == 200


def test_a_limited_user_does_not_limit_anybody_else(auth: AuthService):
    victim, other = signup_and_login(auth), signup_and_login(auth)
    for _ in range(PER_USER):
        login(auth, victim.username, "wrong password", source=STRANGER)
    assert login(auth, other.username, other.password, source=STRANGER).status_code == 200


@pytest.fixture
def strict_auth(broker: Broker, tmp_path: Path) -> Iterator[AuthService]:
    """An auth service of its own with a small per-address limit and a first delay long
    enough to see on a loaded machine; the broker does not ask it
    (its broker API listens on a port nobody calls), so the session's service is untouched."""
    service = start_auth(
        broker,
        tmp_path,
        MESSENGER_AUTH_BROKER_API_PORT=str(free_port()),
        MESSENGER_AUTH_LOGIN_FAILURES_PER_ADDRESS="3",
        MESSENGER_AUTH_LOGIN_BASE_DELAY_SECONDS=str(BASE_DELAY),
    )
    try:
        yield service
    finally:
        service.stop()


def test_an_address_guessing_names_waits_for_new_names_but_keeps_its_known_users(
    strict_auth: AuthService,
):
    regular = signup_and_login(strict_auth)  # has logged in from 127.0.0.1 before
    newcomer = unique_username()
    created = httpx.post(
        f"{strict_auth.url}/v1/users",
        json={"username": newcomer, "display_name": "New", "password": regular.password},
        timeout=30,
    )
    assert created.status_code == 201
    for _ in range(3):  # names that do not exist spend the address's budget
        assert login(strict_auth, unique_username(), "guessing").status_code == 401
    response = login(strict_auth, newcomer, regular.password)  # a first login from there
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert login(strict_auth, regular.username, regular.password).status_code == 200
    assert login(strict_auth, newcomer, regular.password, source=STRANGER).status_code == 200


def test_wrong_passwords_from_one_address_grow_a_delay_then_the_right_one_works(
    strict_auth: AuthService,
):
    user = signup_and_login(strict_auth)
    for _ in range(FREE_FAILURES + 1):
        assert login(strict_auth, user.username, "wrong password").status_code == 401
    response = login(strict_auth, user.username, user.password)
    assert response.status_code == 429
    assert "too many failed logins" in response.json()["detail"]
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= BASE_DELAY  # one failure past the free ones: the first delay
    # Throttled, not locked: once the delay has passed, the right password logs in.
    eventually(
        lambda: login(strict_auth, user.username, user.password).status_code == 200, timeout=30
    )
