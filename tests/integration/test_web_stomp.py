"""Web STOMP through the public origin's /ws, as a script would use it (no browser needed
to attack it): the broker stays the boundary, exactly as for AMQP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from deploy.local_broker import free_port
from protocol.messages import SENT_MS_HEADER
from services.auth.web import MAX_CLIENT_FRAME_BYTES
from tests.integration.stack import (
    AuthService,
    Broker,
    ServiceProcess,
    User,
    eventually,
    signup_and_login,
    start_auth,
)

SUBPROTOCOLS = [Subprotocol("v12.stomp")]


def frame(command: str, headers: dict[str, str], body: str = "") -> str:
    lines = "".join(f"{key}:{value}\n" for key, value in headers.items())
    return f"{command}\n{lines}\n{body}\0"


def parse(raw: str | bytes) -> tuple[str, dict[str, str], str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    head, _, body = text.lstrip("\n").partition("\n\n")
    command, *lines = head.split("\n")
    headers = dict(line.split(":", 1) for line in lines if ":" in line)
    return command, headers, body.rstrip("\0\n")


class Stomp:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def send(self, command: str, headers: dict[str, str], body: str = "") -> None:
        self.ws.send(frame(command, headers, body))

    def next(self, timeout: float = 10) -> tuple[str, dict[str, str], str]:
        """The next frame other than a heart-beat; ("CLOSED", {}, "") once the socket is."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            except ConnectionClosed:
                return "CLOSED", {}, ""
            if raw.strip():
                return parse(raw)

    def closed_soon(self, timeout: float = 10) -> bool:
        """The broker ends the session (an ERROR frame, then the close)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            command, _, _ = self.next(timeout=deadline - time.monotonic())
            if command == "CLOSED":
                return True
        return False


@contextmanager
def stomp(auth: AuthService, login: str | None, passcode: str | None) -> Iterator[Stomp]:
    url = auth.url.replace("http://", "ws://") + "/ws"
    with connect(url, subprotocols=SUBPROTOCOLS, open_timeout=10, proxy=None) as ws:
        client = Stomp(ws)
        headers = {"accept-version": "1.2", "host": "messenger", "heart-beat": "0,0"}
        if login is not None and passcode is not None:
            headers |= {"login": login, "passcode": passcode}
        client.send("CONNECT", headers)
        yield client


def connected(auth: AuthService, user: User) -> Iterator[Stomp]:
    with stomp(auth, user.username, user.token) as client:
        command, headers, body = client.next()
        assert command == "CONNECTED", (command, headers, body)
        yield client


def send_headers(user: User, **extra: str) -> dict[str, str]:
    return {
        "destination": f"/exchange/outbox/{user.username}",
        "content-type": "application/json",
        "user-id": user.username,
        "amqp-message-id": str(uuid.uuid4()),
        "type": "messenger.send",
        "persistent": "true",
        SENT_MS_HEADER: str(int(time.time() * 1000)),
        **extra,
    }


@pytest.fixture
def pair(auth: AuthService, relay: ServiceProcess) -> tuple[User, User]:
    return signup_and_login(auth, "ws"), signup_and_login(auth, "ws")


def test_a_user_sends_and_receives_with_the_session_token(auth, pair):
    alice, bob = pair
    for bob_stomp in connected(auth, bob):
        bob_stomp.send("SUBSCRIBE", {"id": "s", "destination": f"/amq/queue/inbox.{bob.username}",
                                     "ack": "client-individual"})  # fmt: skip
        for alice_stomp in connected(auth, alice):
            body = json.dumps({"to": bob.username, "text": "over web stomp"})
            alice_stomp.send("SEND", send_headers(alice, receipt="r1"), body)
            assert alice_stomp.next()[:2] == ("RECEIPT", {"receipt-id": "r1"})
        command, headers, body = bob_stomp.next()
        assert command == "MESSAGE", (command, body)
        message = json.loads(body)
        assert (message["from"], message["text"]) == (alice.username, "over web stomp")
        assert headers["type"] == "messenger.message"


def test_no_login_a_wrong_token_or_another_users_token_is_refused(auth, pair):
    alice, bob = pair
    for login, passcode in [(None, None), (alice.username, "not-a-token"),
                            (alice.username, bob.token), ("guest", "guest")]:  # fmt: skip
        with stomp(auth, login, passcode) as client:
            command, _, body = client.next()
            assert command == "ERROR" and "Access refused" in body, (login, command, body)


def denials(auth: AuthService, username: str) -> int:
    """How many of `username`'s requests the auth service has refused (it logs each)."""
    return auth.log().count(f"denied to '{username}'")


def test_nobody_reads_another_users_queue_or_declares_a_queue(auth, pair):
    alice, bob = pair
    for destination, logged in (
        (f"/amq/queue/inbox.{alice.username}", True),  # someone else's inbox
        ("/queue/mine", True),  # declares a queue: users configure nothing
        (f"/exchange/inbox/{alice.username}", True),  # binds a queue of its own to the inbox
        ("/topic/everyone", False),  # refused by /broker/topic (which logs nothing)
    ):
        before = denials(auth, bob.username)
        for client in connected(auth, bob):
            client.send("SUBSCRIBE", {"id": "s", "destination": destination, "receipt": "sub"})
            assert client.closed_soon(), destination
        if logged:
            eventually(lambda: denials(auth, bob.username) > before)  # noqa: B023


def test_a_send_cannot_ask_for_a_temporary_reply_queue(auth, pair, broker: Broker):
    """A browser cannot use direct reply-to, and must not get temp queues either."""
    alice, bob = pair
    before = denials(auth, bob.username)
    for client in connected(auth, bob):
        headers = send_headers(bob, receipt="r", **{"reply-to": "/temp-queue/answers"})
        client.send("SEND", headers, json.dumps({"to": alice.username, "text": "hi"}))
        assert client.closed_soon()
    eventually(lambda: denials(auth, bob.username) > before)


def test_a_forged_sender_or_a_write_outside_the_outbox_is_refused(auth, pair, broker: Broker):
    alice, bob = pair
    forged = send_headers(bob, **{"user-id": alice.username, "receipt": "r"})
    for headers in (
        forged,
        send_headers(bob, receipt="r", destination=f"/exchange/inbox/{alice.username}"),
        send_headers(bob, receipt="r", destination=f"/amq/queue/inbox.{alice.username}"),
    ):
        for client in connected(auth, bob):
            client.send("SEND", headers, json.dumps({"to": alice.username, "text": "forged"}))
            assert client.closed_soon(), headers["destination"]
    time.sleep(0.5)
    assert broker.queue_depths().get(f"inbox.{alice.username}", 0) == 0


def test_the_proxy_refuses_another_origin_and_oversized_frames(auth, pair):
    url = auth.url.replace("http://", "ws://") + "/ws"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, subprotocols=SUBPROTOCOLS, origin=Origin("http://evil.example"), proxy=None)
    assert refused.value.response.status_code == 403
    _, bob = pair
    for client in connected(auth, bob):
        client.ws.send("x" * (MAX_CLIENT_FRAME_BYTES + 1))
        assert client.closed_soon()
        assert client.ws.close_code == 1009


def test_without_a_reachable_broker_the_socket_is_refused_and_the_page_still_loads(
    broker: Broker, tmp_path
):
    lonely = start_auth(
        broker,
        tmp_path,
        MESSENGER_AUTH_BROKER_API_PORT=str(free_port()),  # the session's auth service has it
        MESSENGER_AUTH_WEB_STOMP_URLS="ws://127.0.0.1:9/ws",
    )
    try:
        url = lonely.url.replace("http://", "ws://") + "/ws"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, subprotocols=SUBPROTOCOLS, proxy=None)
        assert refused.value.response.status_code == 403
        assert httpx.get(f"{lonely.url}/").status_code == 200
    finally:
        lonely.stop()
