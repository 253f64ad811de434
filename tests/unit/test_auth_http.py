"""Both HTTP apps in-process: status codes, readable 422s, body limits, the broker's allow/deny."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from protocol.accounts import Meta
from services.auth.accounts import Accounts
from services.auth.broker_api import create_broker_app
from services.auth.hashing import PasswordHashing
from services.auth.public_api import create_public_app
from services.auth.ratelimit import LoginLimiter
from services.auth.store import Store
from tests.unit.auth_fakes import FakeInboxes

PASSWORD = "correct horse battery"
META = Meta(protocol_version=1, amqp_url="amqp://broker:5672", vhost="messenger")


class InProcessClient:
    """A synchronous client for an ASGI app, in-process (starlette's InProcessClient is deprecated
    with httpx)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("10.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)




@pytest.fixture
def inboxes() -> FakeInboxes:
    return FakeInboxes()


@pytest.fixture
def accounts(tmp_path, inboxes) -> Accounts:
    return Accounts(
        Store(tmp_path / "users.sqlite3"),
        PasswordHashing(time_cost=1, memory_kib=1024, parallelism=1),
        LoginLimiter.create(per_user=3, per_address=100, window_seconds=60),
        inboxes,
        token_ttl_seconds=3600,
    )


@pytest.fixture
def public(accounts) -> InProcessClient:
    return InProcessClient(create_public_app(accounts, META, max_body_bytes=4096))


@pytest.fixture
def broker_api(accounts) -> InProcessClient:
    return InProcessClient(create_broker_app(accounts, "messenger", max_body_bytes=4096))


def sign_up(public: InProcessClient, username: str = "alice") -> None:
    body = {"username": username, "display_name": username.title(), "password": PASSWORD}
    assert public.post("/v1/users", json=body).status_code == 201


def test_sign_up_answers_201_with_the_public_user_only(public):
    body = {"username": "alice", "display_name": "Alice", "password": PASSWORD}
    response = public.post("/v1/users", json=body)
    assert response.status_code == 201
    assert response.json() == {"username": "alice", "display_name": "Alice"}


def test_sign_up_of_a_taken_name_is_409(public):
    sign_up(public)
    body = {"username": "alice", "display_name": "Other", "password": PASSWORD}
    response = public.post("/v1/users", json=body)
    assert response.status_code == 409
    assert "taken" in response.json()["detail"]


def test_sign_up_while_the_broker_is_down_is_503(public, inboxes, accounts):
    inboxes.down = True
    body = {"username": "alice", "display_name": "Alice", "password": PASSWORD}
    response = public.post("/v1/users", json=body)
    assert response.status_code == 503
    assert accounts.store.count_users() == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "request body is required"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"username": "Alice", "display_name": "A", "password": "12345678"}', "lowercase"),
    ],
)
def test_bad_sign_up_bodies_are_422_with_a_one_line_reason(public, accounts, content, reason):
    response = public.post(
        "/v1/users", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert reason in response.json()["detail"]
    assert accounts.store.count_users() == 0


def test_a_body_over_the_limit_is_413_whether_announced_or_streamed(public):
    huge = b"x" * 5000
    assert public.post("/v1/users", content=huge).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    assert public.post("/v1/users", content=chunks()).status_code == 413


def test_login_refusals_do_not_tell_unknown_users_from_wrong_passwords(public):
    sign_up(public)
    wrong = public.post("/v1/sessions", json={"username": "alice", "password": "nope nope"})
    unknown = public.post("/v1/sessions", json={"username": "bobby", "password": "nope nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_rate_limited_login_is_429_with_retry_after(public):
    sign_up(public)
    for _ in range(3):
        public.post("/v1/sessions", json={"username": "alice", "password": "nope nope"})
    response = public.post("/v1/sessions", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1


def test_logout_needs_a_bearer_token_and_revokes_it(public):
    sign_up(public)
    token = public.post("/v1/sessions", json={"username": "alice", "password": PASSWORD}).json()[
        "token"
    ]
    assert public.delete("/v1/sessions/current").status_code == 401
    assert (
        public.delete("/v1/sessions/current", headers={"Authorization": token}).status_code == 401
    )
    auth = {"Authorization": f"Bearer {token}"}
    current = public.get("/v1/sessions/current", headers=auth)
    assert current.status_code == 200 and current.json()["username"] == "alice"
    assert public.delete("/v1/sessions/current", headers=auth).status_code == 204
    assert public.get("/v1/sessions/current", headers=auth).status_code == 401
    assert public.get("/v1/sessions/current").status_code == 401
    wrong_method = public.request("PUT", "/v1/sessions/current")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "DELETE, GET"  # both routes of the path
    response = public.delete("/v1/sessions/current", headers=auth)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_user_lookup_and_meta(public):
    sign_up(public)
    assert public.get("/v1/users/alice").json() == {"username": "alice", "display_name": "Alice"}
    assert public.get("/v1/users/nobody").status_code == 404
    assert public.get("/v1/meta").json() == META.model_dump()
    assert public.get("/healthz").status_code == 200


def test_the_public_app_has_no_broker_endpoints(public):
    for path in ("user", "vhost", "resource", "topic"):
        assert public.post(f"/broker/{path}", data={"username": "a"}).status_code == 404


def answer(client: InProcessClient, path: str, **fields: str) -> str:
    response = client.post(f"/broker/{path}", data=fields)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_broker_user_allows_the_password_and_denies_anything_else(public, broker_api):
    sign_up(public)
    assert answer(broker_api, "user", username="alice", password=PASSWORD) == "allow"
    assert answer(broker_api, "user", username="alice", password="wrong one") == "deny"
    assert answer(broker_api, "user", username="nobody", password=PASSWORD) == "deny"
    assert answer(broker_api, "user", username="alice") == "deny"
    assert answer(broker_api, "user") == "deny"


def test_broker_user_decodes_form_encoded_passwords_with_special_characters(public, broker_api):
    password = "p+ss w&rd=%20ü"
    body = {"username": "carol", "display_name": "Carol", "password": password}
    assert public.post("/v1/users", json=body).status_code == 201
    assert answer(broker_api, "user", username="carol", password=password) == "allow"


def test_broker_user_denies_a_username_given_twice(public, broker_api):
    sign_up(public)
    response = broker_api.post(
        "/broker/user",
        content=f"username=alice&username=bob&password={PASSWORD}".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.text == "deny"


def test_broker_resource_answers_the_permission_model(broker_api):
    def resource(name: str, kind: str, permission: str, username: str = "alice") -> str:
        return answer(
            broker_api,
            "resource",
            username=username,
            vhost="messenger",
            resource=kind,
            name=name,
            permission=permission,
        )

    assert resource("inbox.alice", "queue", "read") == "allow"
    assert resource("outbox", "exchange", "write") == "allow"
    assert resource("inbox.bob", "queue", "read") == "deny"
    assert resource("inbox.alice", "queue", "configure") == "deny"
    assert resource("inbox", "exchange", "write") == "deny"
    assert resource("inbox.relay", "queue", "read", username="relay") == "deny"


def test_broker_vhost_and_topic(broker_api):
    assert answer(broker_api, "vhost", username="alice", vhost="messenger", ip="::1") == "allow"
    assert answer(broker_api, "vhost", username="alice", vhost="/", ip="::1") == "deny"
    assert (
        answer(
            broker_api,
            "topic",
            username="alice",
            vhost="messenger",
            resource="topic",
            name="amq.topic",
            permission="write",
            routing_key="x",
        )
        == "deny"
    )


def test_garbage_to_the_broker_api_is_a_deny_not_an_error(broker_api):
    response = broker_api.post("/broker/resource", content=b"\xff\xfe\x00")
    assert (response.status_code, response.text) == (200, "deny")
    assert broker_api.post("/broker/user", content=b"x" * 5000).status_code == 413


def test_a_body_sent_without_a_json_content_type_is_told_so(public):
    body = b'{"username": "alice", "display_name": "Alice", "password": "long enough"}'
    response = public.post(
        "/v1/users", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["detail"]


def test_the_openapi_document_gives_every_error_as_one_readable_string(public):
    document = public.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert document["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == (
        "string"
    )
    expected = {
        ("/v1/users", "post"): {"201", "400", "409", "413", "422", "503"},
        ("/v1/sessions", "post"): {"200", "400", "401", "413", "422", "429", "503"},
        ("/v1/sessions/current", "delete"): {"204", "401", "503"},
        ("/v1/sessions/current", "get"): {"200", "401"},
        ("/v1/users/{username}", "get"): {"200", "404", "410", "422"},
    }
    for (path, method), codes in expected.items():
        responses = document["paths"][path][method]["responses"]
        assert set(responses) == codes, (path, method)
        for code in codes - {"200", "201", "204"}:
            assert responses[code]["content"]["application/json"]["schema"] == error
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize("field", ["password", "display_name", "username"])
def test_a_lone_surrogate_in_a_sign_up_field_is_422_not_a_crash(public, accounts, field):
    body = {"username": "alice", "display_name": "Alice", "password": PASSWORD}
    raw = json.dumps(body).replace(json.dumps(body[field]), json.dumps(body[field] + "\ud800"))
    response = public.post(
        "/v1/users", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert field.replace("_", " ") in response.json()["detail"]
    assert accounts.store.count_users() == 0


def test_a_lone_surrogate_in_a_login_is_a_plain_refusal(public):
    raw = '{"username": "alice", "password": "abcdefgh\\udc80"}'
    response = public.post(
        "/v1/sessions", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code in (401, 422)
