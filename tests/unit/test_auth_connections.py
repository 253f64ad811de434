"""Which connections and web sockets an ended session closes (the management API faked)."""

from __future__ import annotations

import httpx

from protocol.accounts import connection_name, parse_connection_name
from services.auth.connections import BrokerConnections
from services.auth.web import WebSessions, stomp_credentials


class FakeManagement:
    """The two management API calls the auth service makes, over a list of connections."""

    def __init__(self, rows: list[dict[str, str]]) -> None:
        self.rows = rows
        self.deleted: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            assert request.url.path == "/api/vhosts/messenger/connections"
            return httpx.Response(200, json=self.rows)
        name = request.url.path.removeprefix("/api/connections/")
        self.deleted.append(name)
        return httpx.Response(204)


def row(name: str, user: str, provided: str | None) -> dict[str, str]:
    data = {"name": name, "user": user}
    if provided is not None:
        data["user_provided_name"] = provided
    return data


def broker_connections(management: FakeManagement) -> BrokerConnections:
    return BrokerConnections(
        ["http://mgmt:15672"], "auth", "pw", "messenger", transport=httpx.MockTransport(management)
    )


def tag(token: str) -> str:
    parsed = parse_connection_name(connection_name("x", token))
    assert parsed is not None
    return parsed[1]


def test_logout_closes_only_that_sessions_connections():
    management = FakeManagement(
        [
            row("c1", "alice", connection_name("alice", "t1")),
            row("c2", "alice", connection_name("alice", "t2")),
            row("c3", "bob", connection_name("bob", "t1")),
            row("c4", "alice", None),
        ]
    )
    assert broker_connections(management).end("alice", tag("t1")) == 1
    assert management.deleted == ["c1"]


def test_the_sweep_closes_connections_of_sessions_no_longer_live_and_nothing_else():
    management = FakeManagement(
        [
            row("a live", "alice", connection_name("alice", "live")),
            row("a dead", "alice", connection_name("alice", "dead")),
            row("unnamed", "alice", None),
            row("a script", "alice", "my script"),
            row("lying", "mallory", connection_name("alice", "dead")),  # claims alice's name
        ]
    )
    closed = broker_connections(management).sweep(lambda user: {tag("live")})
    assert closed == 1
    assert management.deleted == ["a dead"]


def test_a_stomp_connect_frame_gives_its_login_and_passcode():
    frame = "\nCONNECT\naccept-version:1.2\nlogin:alice\npasscode:tok\npasscode:other\n\n\x00"
    assert stomp_credentials(frame) == ("alice", "tok")
    assert stomp_credentials(frame.encode()) == ("alice", "tok")
    assert stomp_credentials("SEND\ndestination:/x\n\nhi\x00") is None
    assert stomp_credentials("CONNECT\naccept-version:1.2\n\n\x00") is None
    assert stomp_credentials(b"\xff\xfe") is None


def test_web_sockets_of_a_session_close_when_it_ends_or_is_swept():
    sessions = WebSessions(lambda username, token: token.startswith("live"))
    closed: list[str] = []
    assert sessions.add("alice", "password!", lambda: closed.append("pw")) is None
    key = sessions.add("alice", "live-1", lambda: closed.append("one"))
    assert key == ("alice", tag("live-1"))
    sessions.add("alice", "live-2", lambda: closed.append("two"))
    assert sessions.end("alice", tag("live-1")) == 1
    assert closed == ["one"]
    assert sessions.sweep(lambda user: set()) == 1
    assert closed == ["one", "two"]
