"""The chat's inbox consumer: keeps going through a broker outage, stops on a refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from clients.cli.chat import ChatConsumer, ChatScreen
from clients.cli.output import Painter
from clients.library.connection import FOREVER
from clients.library.devices import DeviceFeed
from clients.library.errors import BrokerRefused, MessengerError
from clients.library.history import History
from clients.library.sender import Sender
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


class FakeInbox:
    """Stands in for the library's DeviceFeed: hands over `batches`, then raises `then`
    or waits for stop()."""

    def __init__(
        self, batches: list[list[DeliveredMessage]], then: MessengerError | None = None
    ) -> None:
        self.batches = batches
        self.then = then
        self.stopped = threading.Event()
        self.give_up_after: float | None = None

    def run(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt=None,
        on_synced=None,
        *,
        give_up_after: float,
    ) -> int:
        self.give_up_after = give_up_after
        for batch in self.batches:
            on_messages(batch)
        if self.then is not None:
            raise self.then
        self.stopped.wait(10)
        return sum(len(batch) for batch in self.batches)

    def stop(self) -> None:
        self.stopped.set()


class FakeReceipts:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send_receipt(self, message_id: str, to: str) -> None:
        self.sent.append((message_id, to))


def chat_consumer(
    inbox: FakeInbox, receipts: FakeReceipts, closed: list[bool], history, screen, failures
):
    return ChatConsumer(
        cast(DeviceFeed, inbox),
        cast(Sender, receipts),
        lambda: closed.append(True),
        history,
        screen,
        failures.append,
    )


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


def test_the_consumer_hands_over_every_batch_and_reconnects_forever(history):
    inbox = FakeInbox([[message("one")], [message("two")]])
    receipts, closed = FakeReceipts(), list[bool]()
    failures: list[MessengerError] = []
    screen = Screen()
    consumer = chat_consumer(inbox, receipts, closed, history, screen, failures)
    consumer.start()
    try:
        deadline = threading.Event()
        for _ in range(200):
            if len(receipts.sent) == 2:
                break
            deadline.wait(0.01)
    finally:
        consumer.stop()
        consumer.join(5)
    assert not consumer.is_alive() and failures == []
    assert inbox.give_up_after == FOREVER  # reconnects for as long as the chat runs
    assert closed == [True]
    assert [m.text for m in history.conversation("bob")] == ["one", "two"]
    assert receipts.sent == [("id-one", "bob"), ("id-two", "bob")]


def test_the_consumer_gives_up_when_the_broker_refuses(history):
    refused = BrokerRefused("the broker refused the login of 'alice'")
    failures: list[MessengerError] = []
    closed: list[bool] = []
    consumer = chat_consumer(
        FakeInbox([], then=refused), FakeReceipts(), closed, history, Screen(), failures
    )
    consumer.start()
    consumer.join(5)
    assert not consumer.is_alive()
    assert failures == [refused] and closed == [True]
