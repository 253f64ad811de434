"""The public account API of a running auth service, against the session's real broker."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import httpx
import pika
import pytest

from services.auth.store import Store
from tests.integration.stack import (
    AuthService,
    Broker,
    close_quietly,
    signup_and_login,
    unique_username,
)


def user_count(auth: AuthService) -> int:
    store = Store(auth.db_path)
    try:
        return store.count_users()
    finally:
        store.close()


def post_signup(auth: AuthService, **fields: object) -> httpx.Response:
    return httpx.post(f"{auth.url}/v1/users", json=fields, timeout=30)


def test_sign_up_creates_a_user_that_can_be_looked_up(auth: AuthService):
    username = unique_username()
    response = post_signup(
        auth, username=username, display_name="Zoë Ångström 🚀", password="pass word 1"
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"username": username, "display_name": "Zoë Ångström 🚀"}
    looked_up = httpx.get(f"{auth.url}/v1/users/{username}", timeout=10)
    assert looked_up.json() == {"username": username, "display_name": "Zoë Ångström 🚀"}


def test_sign_up_with_a_taken_name_is_409(auth: AuthService):
    user = signup_and_login(auth)
    response = post_signup(
        auth, username=user.username, display_name="Other", password="pw pw pw pw"
    )
    assert response.status_code == 409
    assert "taken" in response.json()["detail"]


def test_sign_up_declares_the_inbox_before_answering(auth: AuthService, broker: Broker):
    user = signup_and_login(auth)
    assert broker.queue_depths().get(f"inbox.{user.username}") == 0


def test_unknown_user_lookup_is_404(auth: AuthService):
    assert httpx.get(f"{auth.url}/v1/users/{unique_username()}", timeout=10).status_code == 404


def test_meta_tells_clients_where_the_broker_is(auth: AuthService, broker: Broker):
    meta = httpx.get(f"{auth.url}/v1/meta", timeout=10).json()
    assert meta == {
        "protocol_version": 1,
        "amqp_url": f"{broker.public_amqp_url}/messenger",  # the vhost, as RabbitMQ's URI spec
        "amqp_urls": [f"{broker.public_amqp_url}/messenger"],
        "vhost": "messenger",
    }


def test_a_plain_amqp_client_given_the_meta_url_lands_on_our_vhost(auth: AuthService):
    user = signup_and_login(auth)
    url = httpx.get(f"{auth.url}/v1/meta", timeout=10).json()["amqp_url"]
    scheme, rest = url.split("://", 1)
    parameters = pika.URLParameters(f"{scheme}://{user.username}:{user.token}@{rest}")
    assert parameters.virtual_host == "messenger"
    connection = pika.BlockingConnection(parameters)
    try:  # the inbox exists in our vhost only: passive declare fails anywhere else
        connection.channel().queue_declare(f"inbox.{user.username}", passive=True)
    finally:
        close_quietly(connection)


def test_login_returns_a_token_and_its_expiry(auth: AuthService):
    user = signup_and_login(auth)
    response = httpx.post(
        f"{auth.url}/v1/sessions",
        json={"username": user.username, "password": user.password},
        timeout=10,
    )
    assert response.status_code == 200
    session = response.json()
    assert len(session["token"]) >= 32
    assert session["token"] != user.token
    assert datetime.fromisoformat(session["expires_at"]) > datetime.now(UTC)


@pytest.mark.parametrize("username", ["nobody-here", "../etc/passwd", "UPPER", "x"])
def test_unknown_user_and_wrong_password_get_the_same_401(auth: AuthService, username: str):
    user = signup_and_login(auth)
    wrong = httpx.post(
        f"{auth.url}/v1/sessions", json={"username": user.username, "password": "wrong!!!"}
    )
    unknown = httpx.post(
        f"{auth.url}/v1/sessions", json={"username": username, "password": user.password}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "wrong username or password"}


def test_logout_revokes_the_session(auth: AuthService):
    user = signup_and_login(auth)
    headers = {"Authorization": f"Bearer {user.token}"}
    assert httpx.delete(f"{auth.url}/v1/sessions/current", headers=headers).status_code == 204
    assert httpx.delete(f"{auth.url}/v1/sessions/current", headers=headers).status_code == 401
    assert httpx.delete(f"{auth.url}/v1/sessions/current").status_code == 401


GOOD = {"display_name": "Good Name", "password": "long enough"}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"username": "ab", **GOOD}, "3 to 32 characters"),
        ({"username": "a" * 33, **GOOD}, "3 to 32 characters"),
        ({"username": "Alice" + secrets.token_hex(3), **GOOD}, "lowercase"),
        ({"username": "al ice", **GOOD}, "may hold only"),
        ({"username": "../etc", **GOOD}, "may hold only"),
        ({"username": "abc\n", **GOOD}, "may hold only"),
        ({"username": "-abc", **GOOD}, "must start with a letter or digit"),
        ({"username": "guest", **GOOD}, "reserved"),
        ({"username": "relay", **GOOD}, "reserved"),
        ({"username": "okname", "display_name": "bell\x07", "password": "long enough"}, "U+0007"),
        ({"username": "okname", "display_name": "new\nline", "password": "long enough"}, "U+000A"),
        (
            {"username": "okname", "display_name": "esc\x1b[31m", "password": "long enough"},
            "U+001B",
        ),
        ({"username": "okname", "display_name": "", "password": "long enough"}, "1 to 64"),
        ({"username": "okname", "display_name": "x" * 65, "password": "long enough"}, "1 to 64"),
        ({"username": "okname", "display_name": "   ", "password": "long enough"}, "blank"),
        ({"username": "okname", "display_name": "Ok", "password": "short"}, "at least 8"),
        ({"username": "okname", "display_name": "Ok"}, "password is required"),
        ({"username": 42, **GOOD}, "username: input should be a valid string"),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, dict) else value,
)
def test_each_sign_up_rule_is_a_422_with_a_reason_and_no_user(auth: AuthService, fields, reason):
    before = user_count(auth)
    response = post_signup(auth, **fields)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert reason in detail
    assert user_count(auth) == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "request body is required"),
        (b"{", "not valid JSON"),
        (b"{'username': 'abc'}", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"null", "request body"),
        (b'"username"', "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_empty_and_malformed_bodies_are_422_with_a_reason(auth: AuthService, content, reason):
    before = user_count(auth)
    response = httpx.post(
        f"{auth.url}/v1/users", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert user_count(auth) == before


def test_a_huge_body_is_refused_without_harm(auth: AuthService):
    before = user_count(auth)
    huge = json.dumps({"username": "okname", "display_name": "x" * 200_000, "password": "p" * 8})
    response = httpx.post(
        f"{auth.url}/v1/users", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code in (413, 422)
    assert user_count(auth) == before
    assert httpx.get(f"{auth.url}/healthz").status_code == 200


@pytest.mark.parametrize("path", ["user", "vhost", "resource", "topic"])
def test_the_broker_endpoints_are_not_on_the_public_listener(auth: AuthService, path: str):
    user = signup_and_login(auth)
    form = {"username": user.username, "password": user.token, "vhost": "messenger"}
    assert httpx.post(f"{auth.url}/broker/{path}", data=form).status_code == 404
    assert httpx.get(f"{auth.url}/broker/{path}", params=form).status_code == 404
