"""The chat's inbox consumer: survives a broker outage, stops on a refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from clients.cli.chat import ChatScreen, Consumer
from clients.cli.output import Painter
from clients.library.errors import BrokerRefused, BrokerUnreachable, MessengerError
from clients.library.history import History
from clients.library.messaging import MessengerConnection
from protocol.messages import DeliveredMessage


def message(text: str) -> DeliveredMessage:
    body = {
        "id": f"id-{text}",
        "from": "bob",
        "to": "alice",
        "text": text,
        "sent_at": datetime.now(UTC).isoformat(),
    }
    return DeliveredMessage.model_validate_json(json.dumps(body))


class FakeConnection:
    """Delivers `messages`, then raises `then` or waits for stop()."""

    def __init__(self, messages: list[DeliveredMessage], then: MessengerError | None = None):
        self.messages = messages
        self.then = then
        self.receipts: list[tuple[str, str]] = []
        self.stopped = threading.Event()
        self.closed = False

    def consume_batches(
        self, on_messages: Callable[[list[DeliveredMessage]], None], on_receipt=None
    ) -> int:
        on_messages(list(self.messages))
        if self.then is not None:
            raise self.then
        self.stopped.wait(10)
        return len(self.messages)

    def send_receipt(self, message_id: str, to: str) -> None:
        self.receipts.append((message_id, to))

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.closed = True


def as_connection(fake: FakeConnection) -> MessengerConnection:
    return cast(MessengerConnection, fake)


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


def test_the_consumer_reconnects_after_the_broker_went_away(history, monkeypatch):
    monkeypatch.setattr("clients.cli.chat.RECONNECT_FIRST_DELAY", 0.01)
    first = FakeConnection([message("one")], then=BrokerUnreachable("lost the broker"))
    second = FakeConnection([message("two")])
    failures: list[MessengerError] = []
    screen = Screen()
    consumer = Consumer(
        as_connection(first), lambda: as_connection(second), history, screen, failures.append
    )
    consumer.start()
    try:
        deadline = threading.Event()
        for _ in range(200):
            if second.receipts:
                break
            deadline.wait(0.01)
    finally:
        consumer.stop()
        consumer.join(5)
    assert not consumer.is_alive() and failures == []
    assert first.closed and second.closed
    assert [m.text for m in history.conversation("bob")] == ["one", "two"]
    assert any("lost the broker" in line and "reconnecting" in line for line in screen.lines)
    assert "reconnected" in screen.lines
    assert first.receipts == [("id-one", "bob")] and second.receipts == [("id-two", "bob")]


def test_the_consumer_gives_up_when_the_broker_refuses(history):
    refused = BrokerRefused("the broker refused the login of 'alice'")
    failures: list[MessengerError] = []
    consumer = Consumer(
        as_connection(FakeConnection([], then=refused)),
        lambda: pytest.fail("no retry"),
        history,
        Screen(),
        failures.append,
    )
    consumer.start()
    consumer.join(5)
    assert failures == [refused]
