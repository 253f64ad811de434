"""The chat's sender: a line typed while offline is marked queued, sent when the connection
returns, and listed as not sent if the chat ends first; never dropped silently."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from clients.cli.chat import ChatScreen, ChatSender
from clients.cli.output import Painter
from clients.library.connection import Connection
from clients.library.errors import BrokerUnreachable
from clients.library.history import History
from clients.library.outage import Outage
from protocol.messages import RelayAnswer


class FakeConnection:
    def __init__(self) -> None:
        self.outage = Outage(lambda _line: None)
        self.closed = False

    def add_resume_hook(self, _hook: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeSender:
    """Sends once `online` is set; until then waits, as the library's send does."""

    def __init__(self, stopping: threading.Event) -> None:
        self.online = threading.Event()
        self.stopping = stopping
        self.sent: list[str] = []

    def send(self, to: str, text: str, timeout: float) -> RelayAnswer:
        while not self.online.wait(0.01):
            if self.stopping.is_set():
                raise BrokerUnreachable("stopped while reconnecting to the broker")
        self.sent.append(text)
        number = len(self.sent)
        return RelayAnswer(
            status="accepted", client_id=f"c-{number}", id=f"id-{number}", sent_at=datetime.now(UTC)
        )

    def keep_alive(self) -> None:
        pass


class Screen(ChatScreen):
    def __init__(self) -> None:
        super().__init__("alice", "bob", lambda _username: None, Painter(False))
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def history(tmp_path: Path):
    with History(tmp_path / "h.sqlite3", "alice") as db:
        yield db


def chat_sender(history: History) -> tuple[ChatSender, FakeSender, Screen, FakeConnection]:
    connection, screen = FakeConnection(), Screen()
    sender = ChatSender(cast(Connection, connection), history, screen)
    fake = FakeSender(sender.stopping)
    sender._sender = fake  # type: ignore[assignment]
    return sender, fake, screen, connection


def test_a_line_typed_offline_is_marked_queued_and_sent_when_back(history):
    sender, fake, screen, connection = chat_sender(history)
    connection.outage.failed("the server at h:1 does not answer", 1.0)
    sender.start()
    sender.submit("typed while offline")
    assert screen.lines == ["        … queued, will send when back online: typed while offline"]
    connection.outage.recovered()
    fake.online.set()
    sender.finish(timeout=5)
    assert fake.sent == ["typed while offline"]
    assert any("typed while offline  ✓ accepted" in line for line in screen.lines)
    assert not any("not sent" in line for line in screen.lines)
    assert connection.closed


def test_lines_still_waiting_when_the_chat_ends_are_listed_as_not_sent(history):
    sender, fake, screen, connection = chat_sender(history)
    connection.outage.failed("the server at h:1 does not answer", 1.0)
    sender.start()
    sender.submit("first")
    sender.submit("second")
    sender.finish(timeout=5)
    assert not sender.is_alive() and fake.sent == []
    assert [line for line in screen.lines if "not sent" in line] == [
        "✗: not sent (the chat ended while offline): first",
        "✗: not sent (the chat ended while offline): second",
    ]
