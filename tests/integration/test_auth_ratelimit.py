"""Failed logins are limited per username (API and broker alike) and per client address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pika
import pika.exceptions
import pytest

from deploy.local_broker import free_port
from tests.integration.stack import (
    AuthService,
    Broker,
    close_quietly,
    signup_and_login,
    start_auth,
    unique_username,
)

PER_USER = 10  # the service default, which the test stack keeps


def login(auth: AuthService, username: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{auth.url}/v1/sessions", json={"username": username, "password": password}, timeout=30
    )


def amqp_login_refused(broker: Broker, username: str, password: str) -> bool:
    try:
        connection = broker.connect(username, password)
    except pika.exceptions.AMQPConnectionError:
        return True
    close_quietly(connection)
    return False


def test_too_many_wrong_passwords_give_429_with_retry_after_even_for_the_right_one(
    auth: AuthService,
):
    user = signup_and_login(auth)
    for _ in range(PER_USER):
        assert login(auth, user.username, "wrong password").status_code == 401
    response = login(auth, user.username, user.password)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert "too many failed logins" in response.json()["detail"]


def test_failed_broker_logins_count_toward_the_same_limit(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    for _ in range(PER_USER):
        assert amqp_login_refused(broker, user.username, "wrong password")
    # Limited now: the right password is refused over AMQP and over the API ...
    assert amqp_login_refused(broker, user.username, user.password)
    assert login(auth, user.username, user.password).status_code == 429
    # ... while the session the user already holds keeps working.
    close_quietly(broker.connect(user.username, user.token))


def test_a_limited_user_does_not_limit_anybody_else(auth: AuthService):
    victim, other = signup_and_login(auth), signup_and_login(auth)
    for _ in range(PER_USER):
        login(auth, victim.username, "wrong password")
    assert login(auth, other.username, other.password).status_code == 200


@pytest.fixture
def strict_auth(broker: Broker, tmp_path: Path) -> Iterator[AuthService]:
    """An auth service of its own with a small per-address limit; the broker does not ask it
    (its broker API listens on a port nobody calls), so the session's service is untouched."""
    service = start_auth(
        broker,
        tmp_path,
        MESSENGER_AUTH_BROKER_API_PORT=str(free_port()),
        MESSENGER_AUTH_LOGIN_FAILURES_PER_ADDRESS="3",
    )
    try:
        yield service
    finally:
        service.stop()


def test_failures_from_one_address_across_usernames_limit_that_address(strict_auth: AuthService):
    user = signup_and_login(strict_auth)
    for _ in range(3):
        assert login(strict_auth, unique_username(), "guessing").status_code == 401
    response = login(strict_auth, user.username, user.password)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
