"""Sessions used as broker credentials: log in over AMQP, consume the own inbox, revoke."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from protocol.topology import inbox_queue
from services.auth.store import Store
from services.auth.tokens import new_token, token_hash
from tests.integration.stack import (
    TEST_AUTH_CACHE_TTL_MS,
    AuthService,
    Broker,
    close_quietly,
    deliver_as_relay,
    eventually,
    login_refused,
    signup_and_login,
    unique_username,
)


def test_a_session_token_opens_an_amqp_connection_that_consumes_the_own_inbox(
    auth: AuthService, broker: Broker
):
    user = signup_and_login(auth)
    deliver_as_relay(broker.node, user.username, b"hello")
    connection = broker.connect(user.username, user.token)
    try:
        channel = connection.channel()
        received: list[bytes] = []

        def on_message(ch: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
            received.append(body)
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(inbox_queue(user.username), on_message)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        assert received == [b"hello"]
    finally:
        close_quietly(connection)


def test_the_account_password_also_opens_an_amqp_connection(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    connection = broker.connect(user.username, user.password)
    close_quietly(connection)


def test_a_password_with_form_special_characters_works_over_amqp(auth: AuthService, broker: Broker):
    username = unique_username()
    password = "a+b c&d=e%20f/ü"
    response = httpx.post(
        f"{auth.url}/v1/users",
        json={"username": username, "display_name": "Special", "password": password},
    )
    assert response.status_code == 201
    close_quietly(broker.connect(username, password))
    assert login_refused(broker, username, "a+b c&d=e%20f/u")


def test_a_revoked_token_is_refused_within_the_cache_ttl(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    close_quietly(broker.connect(user.username, user.token))  # now in the broker's auth cache
    response = httpx.delete(
        f"{auth.url}/v1/sessions/current", headers={"Authorization": f"Bearer {user.token}"}
    )
    assert response.status_code == 204
    # The broker may still answer from its cache for up to the TTL; a margin for slow CI.
    eventually(
        lambda: login_refused(broker, user.username, user.token),
        timeout=TEST_AUTH_CACHE_TTL_MS / 1000 + 4,
    )


def test_an_expired_token_is_refused(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    expired, live = new_token(), new_token()
    store = Store(auth.db_path)
    try:
        store.add_session(token_hash(expired), user.username, time.time() - 1)
        store.add_session(token_hash(live), user.username, time.time() + 60)
    finally:
        store.close()
    assert login_refused(broker, user.username, expired)
    assert not login_refused(broker, user.username, live)  # the store is the one in use


def test_a_token_opens_only_its_own_users_account(auth: AuthService, broker: Broker):
    alice, bob = signup_and_login(auth, "a"), signup_and_login(auth, "b")
    assert login_refused(broker, bob.username, alice.token)


def test_only_the_messenger_vhost_is_open_to_users(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    assert login_refused(broker, user.username, user.token, vhost="/")


@pytest.mark.parametrize("secret", ["", "x", "wrong password"])
def test_wrong_secrets_are_refused(auth: AuthService, broker: Broker, secret: str):
    user = signup_and_login(auth)
    assert login_refused(broker, user.username, secret)
