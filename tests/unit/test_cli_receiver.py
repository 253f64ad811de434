"""The receive pipeline: store, then show once, then receipt; receipts update the history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest

from clients.cli.receiving import Receiver
from clients.library.history import History, StoredMessage
from protocol.messages import DeliveredMessage, ReceiptNotice

M = TypeVar("M", DeliveredMessage, ReceiptNotice)
T0 = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


def from_wire(model: type[M], body: dict[str, str]) -> M:
    """Through JSON, as it comes from the broker."""
    return model.model_validate_json(json.dumps(body))


def message(message_id: str, text: str = "hi") -> DeliveredMessage:
    return from_wire(
        DeliveredMessage,
        {
            "id": message_id,
            "client_id": "c1",
            "from": "bob",
            "to": "alice",
            "text": text,
            "sent_at": T0.isoformat(),
        },
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.shown: list[StoredMessage] = []
        self.delivered: list[StoredMessage] = []

    def show(self, stored: StoredMessage) -> None:
        self.events.append(("show", stored.id))
        self.shown.append(stored)

    def receipt(self, message_id: str, sender: str) -> None:
        self.events.append(("receipt", f"{message_id}->{sender}"))

    def checkpoint(self, point: str) -> None:
        self.events.append(("checkpoint", point))


@pytest.fixture
def history(tmp_path: Path):
    with History(tmp_path / "history.sqlite3", "alice") as db:
        yield db


def receiver_for(history: History, recorder: Recorder) -> Receiver:
    return Receiver(
        history,
        show=recorder.show,
        send_receipt=recorder.receipt,
        on_delivered=recorder.delivered.append,
        checkpoint=recorder.checkpoint,
    )


def test_a_message_is_stored_before_it_is_shown_and_receipted(history: History):
    recorder = Recorder()
    seen_in_history: list[bool] = []
    recorder.show = lambda stored: seen_in_history.append(history.get(stored.id) is not None)  # type: ignore[method-assign]
    receiver_for(history, recorder).on_messages([message("m1")])
    assert seen_in_history == [True]
    assert recorder.events == [
        ("checkpoint", "stored"),
        ("checkpoint", "shown"),
        ("receipt", "m1->bob"),
    ]


def test_a_redelivered_message_is_shown_once(history: History):
    recorder = Recorder()
    receiver = receiver_for(history, recorder)
    receiver.on_messages([message("m1")])
    receiver.on_messages([message("m1")])
    assert [s.id for s in recorder.shown] == ["m1"]
    assert receiver.shown == 1
    assert len(history.conversation("bob")) == 1


def test_a_message_stored_but_never_shown_is_shown_on_redelivery(history: History):
    class Died(Exception):
        pass

    def die_after_store(point: str) -> None:
        if point == "stored":
            raise Died

    first = Receiver(
        history, show=lambda s: None, send_receipt=lambda i, s: None, checkpoint=die_after_store
    )
    with pytest.raises(Died):
        first.on_messages([message("m1")])
    recorder = Recorder()
    receiver_for(history, recorder).on_messages([message("m1")])
    assert [s.id for s in recorder.shown] == ["m1"]


def test_a_receipt_marks_the_sent_message_delivered(history: History):
    history.store_sent("m9", to="bob", text="yo", sent_at=T0)
    recorder = Recorder()
    notice = from_wire(
        ReceiptNotice,
        {"message_id": "m9", "reader": "bob", "status": "delivered", "at": T0.isoformat()},
    )
    receiver = receiver_for(history, recorder)
    receiver.on_receipt(notice)
    receiver.on_receipt(notice)
    assert [m.id for m in recorder.delivered] == ["m9"]
    assert history.conversation("bob")[0].status == "delivered"


def test_a_batch_is_stored_then_shown_then_receipted_each_once(history: History):
    history.store_received_many([message("m0")])
    history.mark_shown_many(["m0"])  # shown before a crash: not again
    recorder = Recorder()
    receiver = receiver_for(history, recorder)
    receiver.on_messages([message("m0"), message("m1"), message("m2"), message("m1")])
    assert recorder.events == [
        ("checkpoint", "stored"),
        ("show", "m1"),
        ("show", "m2"),
        ("checkpoint", "shown"),
        ("receipt", "m0->bob"),
        ("receipt", "m1->bob"),
        ("receipt", "m2->bob"),
    ]
    assert receiver.shown == 2
    assert all(m.shown for m in history.conversation("bob"))
