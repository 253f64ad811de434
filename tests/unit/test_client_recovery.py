"""How a client decides between "log in again" and "wait", and where it looks for the
broker while it waits (connection.py), without a broker: pika's connect is replaced."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pika
import pika.exceptions
import pytest

from clients.cli.context import Cli
from clients.library import connection as connection_module
from clients.library.accounts import AccountsClient
from clients.library.connection import Connection, broker_nodes
from clients.library.errors import LoginRefused, LoginUnchecked
from clients.library.state import Paths, StoredSession
from protocol.accounts import Meta

META = Meta(protocol_version=1, amqp_url="amqp://127.0.0.1:5682", vhost="messenger")
MOVED = Meta(protocol_version=1, amqp_url="amqp://127.0.0.1:5999", vhost="messenger")


class FakePika:
    """Stands in for pika.BlockingConnection: each connect calls `answer(port)`."""

    def __init__(self, answer: Callable[[int], Any]) -> None:
        self.answer = answer
        self.ports: list[int] = []

    def __call__(self, parameters: pika.ConnectionParameters) -> Any:
        self.ports.append(parameters.port)
        return self.answer(parameters.port)


class Opened:
    is_open = True

    def close(self) -> None:
        self.is_open = False


def refused_login(_port: int) -> Any:
    raise pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED")


@pytest.fixture
def fake_pika(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[int], Any]], FakePika]:
    def install(answer: Callable[[int], Any]) -> FakePika:
        fake = FakePika(answer)
        monkeypatch.setattr(pika, "BlockingConnection", fake)
        monkeypatch.setattr(connection_module, "META_REFRESH_SECONDS", 0.0)
        return fake

    return install


def connection(**kwargs: Any) -> Connection:
    return Connection(broker_nodes(META, "alice", "token"), "alice", **kwargs)


def test_a_refused_login_is_final_when_the_account_api_says_401(fake_pika):
    fake_pika(refused_login)
    with pytest.raises(LoginRefused):
        connection(check_session=lambda: False)


def test_a_refused_login_while_the_auth_service_is_down_is_waited_out(fake_pika):
    fake = fake_pika(lambda _port: Opened())
    opened = connection(check_session=lambda: None)
    lines: list[str] = []
    opened.outage.report = lines.append
    answers: list[Callable[[int], Any]] = [refused_login, refused_login, lambda _port: Opened()]
    fake.answer = lambda port: answers.pop(0)(port)
    opened.reconnect(pika.exceptions.StreamLostError("lost"), window=10)
    assert opened.is_open and len(fake.ports) == 4
    assert "cannot check logins right now" in lines[0]
    assert lines[-1].startswith("back online after")


def test_a_one_shot_login_the_broker_cannot_check_says_nothing_was_sent(fake_pika):
    fake_pika(refused_login)
    with pytest.raises(LoginUnchecked, match="cannot check logins right now") as caught:
        connection(check_session=lambda: None)
    assert "log in again" not in str(caught.value) + str(caught.value.hint)


def test_while_waiting_the_client_asks_where_the_broker_is_now(fake_pika):
    fake = fake_pika(lambda port: Opened())
    opened = connection(discover=lambda: broker_nodes(MOVED, "alice", "token"))

    def only_the_new_port(port: int) -> Opened:
        if port != 5999:
            raise pika.exceptions.AMQPConnectionError(ConnectionRefusedError(111, "refused"))
        return Opened()

    fake.answer = only_the_new_port
    lines: list[str] = []
    opened.outage.report = lines.append
    stop = threading.Event()
    opened.reconnect(pika.exceptions.StreamLostError("lost"), window=10, interrupt=stop)
    assert fake.ports[-1] == 5999 and 5682 in fake.ports
    assert lines[0].startswith("offline: the server at 127.0.0.1:5682")
    assert lines[-1].startswith("back online after")


def session_check(status: int) -> bool | None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer tok"
        body = {"username": "alice", "expires_at": "2030-01-01T00:00:00Z"}
        return httpx.Response(status, json=body if status == 200 else {"detail": "gone"})

    class TestCli(Cli):
        def accounts(self, timeout: float | None = None) -> AccountsClient:
            return AccountsClient("http://server", transport=httpx.MockTransport(handler))

    cli = TestCli(server_option="http://server", paths=Paths.from_env({}))
    session = StoredSession("http://server", "alice", "tok", expires_at=None)  # type: ignore[arg-type]
    return cli.session_valid(session)


def test_the_account_api_decides_whether_a_session_is_gone():
    assert session_check(200) is True
    assert session_check(401) is False
    assert session_check(503) is None  # cannot tell: keep trying
