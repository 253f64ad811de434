"""Pure logic of server-side conversations in the client: carbons, receipt acceptance,
dedupe across live/sync/history, the sync cursor, read receipts, the settings cache."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clients.library.errors import InvalidInput, ServerUnreachable
from clients.library.history import History
from clients.library.pages import fill_back, fill_recent
from clients.library.receipts import ReadReceipts, SettingsCache, newest_per_sender
from clients.library.sync import CURSOR_KEY, Syncer, advance_cursor
from protocol.conversations import (
    AccountSettings,
    ArchivedMessage,
    ConversationSummary,
    MessagePage,
    SyncPage,
)
from protocol.messages import DeliveredMessage, ReceiptNotice

T0 = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


def live(message_id: str, sender: str = "bob", to: str = "alice", at: datetime = T0):
    return DeliveredMessage.model_validate(
        {"id": message_id, "from": sender, "to": to, "text": "hi " + message_id, "sent_at": at}
    )


def archived(message_id: str, sender: str = "bob", to: str = "alice", status: str = "accepted"):
    return ArchivedMessage.model_validate(
        {"id": message_id, "from": sender, "to": to, "text": "t", "sent_at": T0, "status": status}
    )


def notice(message_id: str, reader: str, status: str = "delivered") -> ReceiptNotice:
    return ReceiptNotice.model_validate(
        {"message_id": message_id, "reader": reader, "status": status, "at": T0}
    )


@pytest.fixture
def history(tmp_path: Path):
    with History(tmp_path / "h" / "history.sqlite3", "alice") as db:
        yield db


# -- carbons -------------------------------------------------------------------------------


def test_a_carbon_is_stored_as_sent_by_me_and_shown_once(history: History):
    [row] = history.store_received_many([live("m1", sender="alice", to="bob")])
    assert (row.sender, row.recipient, row.status, row.shown) == ("alice", "bob", "accepted", False)
    assert history.is_carbon(row)
    history.mark_shown_many(["m1"])
    assert history.store_received_many([live("m1", sender="alice", to="bob")])[0].shown
    assert [m.id for m in history.conversation("bob")] == ["m1"]


def test_my_own_send_and_its_carbon_are_one_row(history: History):
    history.store_sent("m1", to="bob", text="hello", sent_at=T0)
    [row] = history.store_received_many([live("m1", sender="alice", to="bob")])
    assert (row.status, row.shown) == ("accepted", True)  # not shown a second time
    assert len(history.conversation("bob")) == 1


def test_the_answer_after_the_carbon_keeps_one_row(history: History):
    history.store_received_many([live("m1", sender="alice", to="bob")])
    history.apply_receipt(notice("m1", "bob"))
    stored = history.store_sent("m1", to="bob", text="hello", sent_at=T0)
    assert stored.status == "delivered"  # never back to accepted
    assert len(history.conversation("bob")) == 1


# -- receipts ------------------------------------------------------------------------------


def test_a_receipt_counts_only_from_the_recipient(history: History):
    history.store_sent("m1", to="bob", text="hello", sent_at=T0)
    assert history.apply_receipt(notice("m1", "mallory")) == []
    assert history.get("m1").status == "accepted"  # type: ignore[union-attr]
    [row] = history.apply_receipt(notice("m1", "bob"))
    assert row.status == "delivered"


def test_statuses_only_go_up(history: History):
    history.store_sent("m1", to="bob", text="hello", sent_at=T0)
    history.apply_receipt(notice("m1", "bob", "read"))
    assert history.apply_receipt(notice("m1", "bob", "delivered")) == []
    assert history.get("m1").status == "read"  # type: ignore[union-attr]


def test_read_covers_the_earlier_messages_to_that_person_only(history: History):
    for i, to in enumerate(["bob", "bob", "carol", "bob"]):
        history.store_sent(f"m{i}", to=to, text="x", sent_at=T0 + timedelta(seconds=i))
    updated = history.apply_receipt(notice("m1", "bob", "read"))
    assert sorted(m.id for m in updated) == ["m0", "m1"]
    statuses = {i: history.get(f"m{i}").status for i in range(4)}  # type: ignore[union-attr]
    assert statuses == {0: "read", 1: "read", 2: "accepted", 3: "accepted"}


def test_an_early_receipt_waits_for_its_message_and_its_reader_is_checked(history: History):
    history.apply_receipt(notice("m1", "bob", "read"))
    history.apply_receipt(notice("m2", "mallory", "read"))
    assert history.store_sent("m1", to="bob", text="x", sent_at=T0).status == "read"
    assert history.store_sent("m2", to="bob", text="x", sent_at=T0).status == "accepted"


def test_an_early_receipt_applies_to_a_carbon(history: History):
    history.apply_receipt(notice("m1", "bob", "delivered"))
    [row] = history.store_received_many([live("m1", sender="alice", to="bob")])
    assert row.status == "delivered"


def test_my_read_on_another_device_marks_received_messages_read(history: History):
    history.store_received_many([live("m1"), live("m2"), live("m3", sender="carol")])
    assert history.apply_receipt(notice("m2", "alice", "read")) == []
    read = {m.id: m.read for m in [history.get("m1"), history.get("m2"), history.get("m3")] if m}
    assert read == {"m1": True, "m2": True, "m3": False}


def test_someone_else_cannot_mark_my_received_messages_read(history: History):
    history.store_received_many([live("m1")])
    history.apply_receipt(notice("m1", "bob", "read"))
    assert not history.get("m1").read  # type: ignore[union-attr]


# -- the archive's view --------------------------------------------------------------------


def test_archived_messages_bring_their_state_and_dedupe_with_live(history: History):
    history.store_received_many([live("m1")])
    history.store_sent("m2", to="bob", text="x", sent_at=T0)
    rows = history.store_received_many(
        [archived("m1", status="read"), archived("m2", "alice", "bob", "delivered")]
    )
    assert [r.id for r in rows] == ["m1", "m2"]
    assert rows[0].read and rows[1].status == "delivered"
    assert len(history.conversation("bob")) == 2


def test_history_pages_are_stored_as_shown(history: History):
    [row] = history.store_received_many([archived("m1")], shown=True)
    assert row.shown
    assert history.oldest_id("bob") == "m1"


def test_local_summaries_count_unread(history: History):
    history.store_received_many([live("m1"), live("m2", sender="carol")])
    history.mark_read(["m1"])
    history.store_sent("m3", to="bob", text="x", sent_at=T0 + timedelta(seconds=5))
    summaries = {s.peer: (s.last.id, s.unread) for s in history.summaries()}
    assert summaries == {"bob": ("m3", 0), "carol": ("m2", 1)}


def test_an_old_database_is_migrated(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (id TEXT PRIMARY KEY, client_id TEXT, sender TEXT NOT NULL,"
        " recipient TEXT NOT NULL, text TEXT NOT NULL, sent_at TEXT NOT NULL,"
        " status TEXT NOT NULL, shown INTEGER NOT NULL DEFAULT 0, stored_at TEXT NOT NULL);"
        "CREATE TABLE early_receipts (message_id TEXT PRIMARY KEY, status TEXT NOT NULL);"
        "INSERT INTO messages VALUES ('m1', NULL, 'alice', 'bob', 'x',"
        " '2026-01-02T10:00:00.000000+00:00', 'sent', 1, '2026-01-02T10:00:00.000000+00:00');"
    )
    db.commit()
    db.close()
    with History(path, "alice") as history:
        assert history.get("m1").status == "accepted"  # type: ignore[union-attr]
        assert [m.status for m in history.apply_receipt(notice("m1", "bob"))] == ["delivered"]


# -- the sync cursor -----------------------------------------------------------------------


class FakeApi:
    """The two calls the syncer makes, answered from lists (no HTTP)."""

    def __init__(
        self, pages: list[SyncPage], summaries: list[ConversationSummary] | None = None
    ) -> None:
        self.pages = list(pages)
        self.summaries = list(summaries or [])
        self.asked: list[str | None] = []
        self.pages_of: dict[str, list[ArchivedMessage]] = {}

    def conversations(self) -> list[ConversationSummary]:
        return self.summaries

    def messages(self, peer: str, limit: int = 50, **_cursor: str | None) -> MessagePage:
        return MessagePage(messages=self.pages_of.get(peer, [])[-limit:], has_more=False)

    def sync(self, after: str | None, limit: int = 200) -> SyncPage:
        self.asked.append(after)
        return self.pages.pop(0)


def page(*ids: str, more: bool = False, receipts: list[ReceiptNotice] | None = None) -> SyncPage:
    return SyncPage(messages=[archived(i) for i in ids], receipts=receipts or [], has_more=more)


def test_a_new_device_starts_from_the_newest_last_message(history: History):
    summary = ConversationSummary(peer="bob", last_message=archived("m5"), updated_at=T0)
    api: Any = FakeApi([page("m6")], [summary])
    seen: list[SyncPage] = []
    assert Syncer(api, history).run(seen.append) == 1
    assert api.asked == ["m5"]
    assert history.get("m5") is None  # may be in the device queue: shown when it comes
    assert history.state(CURSOR_KEY) == "m6"


def test_a_new_device_takes_in_what_is_unread_first(history: History):
    bob = ConversationSummary(peer="bob", last_message=archived("m4"), unread=2, updated_at=T0)
    carol = ConversationSummary(peer="carol", last_message=archived("m2", "carol"), updated_at=T0)
    api: Any = FakeApi([page()], [bob, carol])
    api.pages_of = {"bob": [archived("m1"), archived("m2x", "alice", "bob"), archived("m3"),
                            archived("m4")]}  # fmt: skip
    seen: list[SyncPage] = []
    Syncer(api, history).run(seen.append)
    assert [[m.id for m in p.messages] for p in seen] == [["m3", "m4"], []]
    assert api.asked == ["m4"]


def test_sync_pages_on_and_the_cursor_follows(history: History):
    advance_cursor(history, ["m1"])
    api: Any = FakeApi([page("m2", "m3", more=True), page("m4")])
    Syncer(api, history).run(lambda p: history.store_received_many(p.messages))
    assert api.asked == ["m1", "m3"]
    assert history.state(CURSOR_KEY) == "m4"


def test_the_cursor_never_goes_back_and_ignores_history_pages(history: History):
    advance_cursor(history, ["m5", "m3"])
    advance_cursor(history, ["m4"])
    history.store_received_many([archived("m9")], shown=True)  # a history page: newer
    assert history.state(CURSOR_KEY) == "m5"
    api: Any = FakeApi([page()])
    Syncer(api, history).run(lambda p: None)
    assert api.asked == ["m5"]


# -- read receipts and settings ------------------------------------------------------------


def test_one_read_receipt_per_sender_naming_the_newest(history: History):
    rows = history.store_received_many(
        [live("m1"), live("m3"), live("m2", sender="carol"), live("m4", "alice", "bob")]
    )
    assert newest_per_sender("alice", rows) == {"bob": "m3", "carol": "m2"}
    sent: list[tuple[str, str, bool]] = []
    reads = ReadReceipts(history, lambda *a: sent.append(a), lambda: False)
    assert reads.shown(rows) == 2
    assert sorted(sent) == [("m2", "carol", False), ("m3", "bob", False)]
    assert history.get("m1").read  # type: ignore[union-attr]
    assert reads.shown([r for r in (history.get("m1"), history.get("m3")) if r]) == 0


def test_settings_are_cached_and_fall_back_when_the_server_is_away(history: History):
    now = [T0]
    calls: list[int] = []

    def fetch() -> AccountSettings:
        calls.append(1)
        if len(calls) > 1:
            raise ServerUnreachable("away")
        return AccountSettings(read_receipts=False)

    cache = SettingsCache(history, fetch, clock=lambda: now[0])
    assert cache.read_receipts() is False
    assert cache.read_receipts() is False and len(calls) == 1  # cached
    now[0] = T0 + timedelta(hours=1)
    assert cache.read_receipts() is False and len(calls) == 2  # stale, server away: cache


class UnknownCursorApi(FakeApi):
    """An archive that knows no cursor but the ones in `known` (422 otherwise)."""

    def __init__(self, known: set[str | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.known = known

    def sync(self, after: str | None, limit: int = 200) -> SyncPage:
        if after not in self.known:
            self.asked.append(after)
            raise InvalidInput("after names no message of this user")
        return super().sync(after, limit)

    def messages(self, peer: str, limit: int = 50, **cursor: str | None) -> MessagePage:
        named = cursor.get("before") or cursor.get("after")
        if named is not None and named not in self.known:
            raise InvalidInput("the cursor names no message of this conversation")
        return super().messages(peer, limit)


def test_a_cursor_the_archive_does_not_know_starts_the_sync_afresh(history: History):
    advance_cursor(history, ["m0-before-the-archive"])
    summary = ConversationSummary(peer="bob", last_message=archived("m7"), updated_at=T0)
    api: Any = UnknownCursorApi({"m7"}, pages=[page("m8")], summaries=[summary])
    assert Syncer(api, history).run(lambda p: None) == 1
    assert api.asked == ["m0-before-the-archive", "m7"]
    assert history.state(CURSOR_KEY) == "m8"


def test_pages_around_messages_the_archive_does_not_know(history: History):
    history.store_received_many([live("m5-local-only")])
    api: Any = UnknownCursorApi(set(), pages=[])
    api.pages_of = {"bob": [archived("m6"), archived("m7")]}
    fill_recent(api, history, "bob", 20)  # the newest page instead
    assert [m.id for m in history.conversation("bob")] == ["m5-local-only", "m6", "m7"]
    assert fill_back(api, history, "bob", None) == 0  # nothing older in the archive
    assert history.filled("bob")
