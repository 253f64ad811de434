"""The local history: one row per message id, status of what was sent, names cache."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clients.library.history import History
from protocol.messages import DeliveredMessage

T0 = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


def delivered(
    message_id: str, sender: str = "bob", to: str = "alice", text: str = "hi", at: datetime = T0
) -> DeliveredMessage:
    # Through JSON, as it arrives from the broker.
    body = {
        "id": message_id,
        "client_id": "c-" + message_id,
        "from": sender,
        "to": to,
        "text": text,
        "sent_at": at.isoformat(),
    }
    return DeliveredMessage.model_validate_json(
        DeliveredMessage.model_validate(body).model_dump_json(by_alias=True)
    )


@pytest.fixture
def history(tmp_path: Path):
    with History(tmp_path / "h" / "history.sqlite3", "alice") as db:
        yield db


def test_a_redelivered_message_is_stored_once(history: History):
    [first] = history.store_received_many([delivered("m1")])
    [again] = history.store_received_many([delivered("m1")])
    assert first == again
    assert [m.id for m in history.conversation("bob")] == ["m1"]


def test_shown_is_remembered_across_redeliveries(history: History):
    history.store_received_many([delivered("m1")])
    history.mark_shown_many(["m1"])
    assert history.store_received_many([delivered("m1")])[0].shown


def test_the_conversation_is_both_directions_oldest_first(history: History):
    history.store_received_many([delivered("m2", at=T0 + timedelta(seconds=2))])
    history.store_sent("m1", to="bob", text="hello", sent_at=T0 + timedelta(seconds=1))
    history.store_received_many([delivered("m3", sender="carol", at=T0 + timedelta(seconds=3))])
    history.store_received_many([delivered("m0", at=T0 - timedelta(hours=1))])
    assert [m.id for m in history.conversation("bob")] == ["m0", "m1", "m2"]
    assert [m.id for m in history.conversation("bob", limit=2)] == ["m1", "m2"]
    assert history.peers() == ["carol", "bob"]


def test_a_receipt_marks_a_sent_message_delivered(history: History):
    history.store_sent("m1", to="bob", text="hello", sent_at=T0)
    updated = history.mark_delivered("m1")
    assert updated is not None and updated.status == "delivered"
    assert history.mark_delivered("m1") is None  # only once


def test_a_receipt_that_overtakes_the_send_record_is_kept(history: History):
    assert history.mark_delivered("m1") is None
    assert history.store_sent("m1", to="bob", text="hello", sent_at=T0).status == "delivered"


def test_a_receipt_never_changes_a_received_message(history: History):
    history.store_received_many([delivered("m1")])
    assert history.mark_delivered("m1") is None
    assert history.conversation("bob")[0].status == "received"


def test_json_has_the_pinned_keys(history: History):
    [stored] = history.store_received_many([delivered("m1", text="héllo")])
    payload = stored.to_json()
    assert {"id", "from", "to", "text", "sent_at"} <= payload.keys()
    assert payload["from"] == "bob" and payload["text"] == "héllo"
    assert datetime.fromisoformat(str(payload["sent_at"])) == T0


def test_display_names_are_cached_with_an_age(history: History):
    assert history.cached_display_name("bob") is None
    history.remember_display_name("bob", "Bob Marley")
    assert history.cached_display_name("bob") == "Bob Marley"
    assert history.cached_display_name("bob", max_age=timedelta(seconds=-1)) is None
    assert history.any_display_name("bob") == "Bob Marley"


def test_the_database_is_private(history: History):
    assert stat.S_IMODE(history.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(history.path.parent.stat().st_mode) == 0o700


def test_a_batch_is_stored_in_one_go_once_per_id_and_in_order(history: History):
    history.store_received_many([delivered("m2")])
    history.mark_shown_many(["m2"])
    rows = history.store_received_many([delivered("m1"), delivered("m2"), delivered("m1")])
    assert [(r.id, r.shown) for r in rows] == [("m1", False), ("m2", True), ("m1", False)]
    assert [m.id for m in history.conversation("bob")] == ["m1", "m2"]
    history.mark_shown_many(["m1"])
    assert history.get("m1") is not None and history.get("m1").shown  # type: ignore[union-attr]
    assert history.store_received_many([]) == []


def test_a_batch_larger_than_one_query_is_read_back_whole(history: History):
    messages = [delivered(f"m{i:04d}") for i in range(1_200)]
    rows = history.store_received_many(messages)
    assert [r.id for r in rows] == [m.id for m in messages]


def test_a_note_to_self_sent_then_arrived_is_one_row_shown_once_and_delivered(history: History):
    sent = history.store_sent("n1", to="alice", text="buy milk", sent_at=T0, client_id="c-n1")
    assert (sent.status, sent.shown) == ("accepted", False)  # `inbox` shows it when it arrives
    [arrived] = history.store_received_many(
        [delivered("n1", sender="alice", to="alice", text="buy milk")]
    )
    assert (arrived.status, arrived.shown) == ("delivered", False)
    history.mark_shown_many(["n1"])
    [again] = history.store_received_many(
        [delivered("n1", sender="alice", to="alice", text="buy milk")]
    )
    assert again.shown
    assert [(m.id, m.status) for m in history.conversation("alice")] == [("n1", "delivered")]


def test_a_note_to_self_that_arrives_before_its_send_is_recorded_is_one_row(history: History):
    history.store_received_many([delivered("n2", sender="alice", to="alice")])
    sent = history.store_sent("n2", to="alice", text="hi", sent_at=T0)
    assert sent.status == "delivered"
    assert len(history.conversation("alice")) == 1


def test_a_message_to_someone_else_is_stored_as_already_shown(history: History):
    assert history.store_sent("m9", to="bob", text="hi", sent_at=T0).shown
