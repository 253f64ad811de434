"""AccountsClient: every HTTP outcome becomes one readable exception from errors.py."""

from __future__ import annotations

import json

import httpx
import pytest

from clients.library.accounts import AccountsClient
from clients.library.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    ServerError,
    ServerUnreachable,
)

URL = "http://messenger.test:8080"


def client_answering(status: int, body: object = None, headers: dict[str, str] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        content = (
            b""
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        return httpx.Response(status, content=content, headers=headers)

    return AccountsClient(URL, transport=httpx.MockTransport(handler))


def test_an_unreachable_server_is_named_by_its_url():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = AccountsClient(URL, transport=httpx.MockTransport(refuse))
    with pytest.raises(ServerUnreachable) as caught:
        client.meta()
    assert URL in str(caught.value)
    assert caught.value.hint and "--server" in caught.value.hint


def test_a_server_that_times_out_is_unreachable_too():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ServerUnreachable, match="did not answer in time"):
        AccountsClient(URL, transport=httpx.MockTransport(slow)).meta()


def test_a_wrong_password_is_an_authentication_failure():
    with pytest.raises(AuthenticationFailed, match="wrong username or password"):
        client_answering(401, {"detail": "invalid credentials"}).login("alice", "nope")


def test_too_many_attempts_say_when_to_retry():
    client = client_answering(429, {"detail": "slow down"}, {"Retry-After": "42"})
    with pytest.raises(RateLimited) as caught:
        client.login("alice", "nope")
    assert caught.value.retry_after == 42
    assert caught.value.hint == "try again in 42 s"


def test_an_invalid_signup_carries_the_servers_reason():
    client = client_answering(422, {"detail": "display name must not be blank"})
    with pytest.raises(InvalidInput, match="display name must not be blank"):
        client.signup("alice", " ", "password1")


def test_fastapi_validation_lists_are_made_readable():
    body = {"detail": [{"loc": ["body", "password"], "msg": "too short"}]}
    with pytest.raises(InvalidInput, match="too short"):
        client_answering(422, body).signup("alice", "Alice", "x")


def test_a_taken_username_is_a_conflict():
    with pytest.raises(Conflict, match="'alice' is taken"):
        client_answering(409, {"detail": "taken"}).signup("alice", "Alice", "password1")


def test_an_unknown_user_is_not_found():
    with pytest.raises(NotFound, match="no user named 'zed'"):
        client_answering(404, {"detail": "no such user"}).user("zed")


@pytest.mark.parametrize("status", [500, 502, 418])
def test_unexpected_statuses_are_server_errors(status: int):
    with pytest.raises(ServerError, match=f"HTTP {status}"):
        client_answering(status, b"<html>oops</html>").meta()


def test_a_broker_outage_is_reported_as_temporary():
    with pytest.raises(ServerError, match="temporarily unavailable"):
        client_answering(503, {"detail": "broker down"}).signup("alice", "Alice", "password1")


def test_an_answer_of_the_wrong_shape_is_a_server_error():
    with pytest.raises(ServerError, match="does not understand"):
        client_answering(200, {"unexpected": True}).meta()


def test_login_returns_the_session_and_logout_sends_the_token():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"token": "t0k", "expires_at": "2030-01-01T00:00:00Z"})
        return httpx.Response(204)

    client = AccountsClient(URL, transport=httpx.MockTransport(handler))
    session = client.login("alice", "password1")
    client.logout(session.token)
    assert session.token == "t0k"
    assert seen[1].headers["Authorization"] == "Bearer t0k"
    assert seen[1].url.path == "/v1/sessions/current"


def test_logging_out_a_token_the_server_forgot_is_fine():
    client_answering(401, {"detail": "unknown token"}).logout("old")
