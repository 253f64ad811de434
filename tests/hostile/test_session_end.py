"""A session that ends takes its AMQP connections with it (services/auth/connections.py).

Before: logging out left every open connection of the session running for as long as the
client liked, and an expired session's connection too.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import httpx
import pexpect
import pika
import pika.exceptions

from protocol.accounts import connection_name
from tests.integration.cli_driver import COMMAND, Person
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    close_quietly,
    signup_and_login,
)
from tests.integration.test_web_stomp import connected

CLOSE_DEADLINE = 30.0  # generous: the sweep runs every 5 s, the machine may be loaded


def session_connection(
    broker: Broker, user: User, token: str | None = None
) -> pika.BlockingConnection:
    """A plain pika connection named as our client names it."""
    secret = token or user.token
    params = broker.params(user.username, secret)
    params.client_properties = {"connection_name": connection_name(user.username, secret)}
    return pika.BlockingConnection(params)


def closed_within(connection: pika.BlockingConnection, seconds: float) -> bool:
    """Whether the broker closes `connection` within `seconds` (it is pumped meanwhile)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            connection.process_data_events(time_limit=0.2)
        except pika.exceptions.AMQPConnectionError:
            return True
        if not connection.is_open:
            return True
    return False


def second_session(auth: AuthService, user: User) -> str:
    response = httpx.post(
        f"{auth.url}/v1/sessions",
        json={"username": user.username, "password": user.password},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_logout_closes_the_sessions_open_connection_and_only_that(
    auth: AuthService, broker: Broker
):
    user = signup_and_login(auth)
    other_token = second_session(auth, user)  # the same user on another device
    doomed = session_connection(broker, user)
    kept = session_connection(broker, user, other_token)
    try:
        time.sleep(1)  # listed by the management API
        response = httpx.delete(
            f"{auth.url}/v1/sessions/current",
            headers={"Authorization": f"Bearer {user.token}"},
            timeout=30,
        )
        assert response.status_code == 204
        assert closed_within(doomed, CLOSE_DEADLINE)
        assert not closed_within(kept, 6)  # one sweep later, the other device is still on
        kept.channel().close()  # and it still works
    finally:
        close_quietly(doomed)
        close_quietly(kept)


def test_an_expired_sessions_connection_is_closed_by_the_sweep(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    connection = session_connection(broker, user)
    try:
        # Expire the session in the store, as time would (the token TTL is a week).
        hashed = hashlib.sha256(user.token.encode()).hexdigest()
        with sqlite3.connect(auth.db_path) as db:
            updated = db.execute(
                "UPDATE sessions SET expires_at = ? WHERE token_hash = ?", (time.time() - 1, hashed)
            ).rowcount
        assert updated == 1
        assert closed_within(connection, CLOSE_DEADLINE)
    finally:
        close_quietly(connection)


def test_a_revoked_token_opens_no_new_connection_for_long(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    response = httpx.delete(
        f"{auth.url}/v1/sessions/current",
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=30,
    )
    assert response.status_code == 204
    # The broker's auth cache may still hold the token briefly (1 s in tests, 5 s deployed);
    # a connection opened meanwhile is closed by the sweep. After that, none opens at all.
    deadline = time.monotonic() + CLOSE_DEADLINE
    while True:
        try:
            connection = session_connection(broker, user)
        except pika.exceptions.AMQPConnectionError:
            break
        assert closed_within(connection, CLOSE_DEADLINE)
        assert time.monotonic() < deadline, "a revoked token still opens connections"


def test_logout_closes_the_sessions_web_client_socket(auth: AuthService):
    user = signup_and_login(auth)
    for web in connected(auth, user):
        response = httpx.delete(
            f"{auth.url}/v1/sessions/current",
            headers={"Authorization": f"Bearer {user.token}"},
            timeout=30,
        )
        assert response.status_code == 204
        command, headers, _ = web.next(timeout=CLOSE_DEADLINE)
        assert (command, headers.get("message")) == ("ERROR", "session ended: log in again")
        assert web.closed_soon(timeout=CLOSE_DEADLINE)


def test_logging_out_elsewhere_stops_a_running_listen_with_one_line(
    auth: AuthService, relay: RelayProcess, tmp_path: Path
):
    alice = Person.signed_up(tmp_path, auth, "ali", "Alice")
    alice.login()
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob")
    bob.login()
    listening = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "listen", "--json"],
        env=bob.env(NO_COLOR="1", TERM="dumb"),
        encoding="utf-8",
        timeout=CLOSE_DEADLINE,
    )
    try:
        alice.ok("send", bob.username, "before")
        listening.expect(r"\{.*\}\r\n")
        bob.ok("logout")  # another terminal of bob's
        listening.expect(pexpect.EOF)
        output = listening.before
    finally:
        listening.close(force=True)
    assert listening.exitstatus == 1, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output
    assert "log in" in lines[-1], output
