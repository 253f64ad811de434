"""The archive's store on SQLite and on PostgreSQL: one code path, the same answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from protocol.messages import DeliveredMessage, ReceiptNotice
from services.archive.store import CursorError, IngestedReceipt, Store
from tests.integration.archive_db import archive_database, postgres_answers

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "postgresql" and not postgres_answers():
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432")
    with archive_database(request.param, tmp_path) as url:
        opened = Store.open(url)
        try:
            yield opened
        finally:
            opened.close()


def message(sender: str, to: str, text: str, n: int = 0) -> DeliveredMessage:
    return DeliveredMessage(
        id=str(uuid.uuid4()),
        client_id=f"c-{uuid.uuid4().hex[:8]}",
        sender=sender,
        to=to,
        text=text,
        sent_at=T0 + timedelta(seconds=n),
    )


def receipt(m: DeliveredMessage, status: str = "read", notify: bool = True) -> IngestedReceipt:
    notice = ReceiptNotice(message_id=m.id, reader=m.to, status=status, at=T0)
    return IngestedReceipt(notice, notify)


def test_a_batch_stored_twice_is_stored_once(store):
    batch = [message("alice", "bob", f"m{i}", i) for i in range(5)]
    assert store.ingest(batch) == 5
    assert store.ingest(batch) == 0  # redelivered after a crash between commit and ack
    assert store.ingest([*batch, batch[0]]) == 0
    page = store.page("bob", "alice", limit=50)
    assert [m.text for m in page.messages] == [f"m{i}" for i in range(5)]
    assert not page.has_more


def test_pages_go_back_and_forth_by_cursor_in_order(store):
    batch = [message("alice" if i % 2 else "bob", "bob" if i % 2 else "alice", f"m{i}", i)
             for i in range(25)]  # fmt: skip
    store.ingest(batch)
    store.ingest([message("carol", "bob", "elsewhere")])
    newest = store.page("alice", "bob", limit=10)
    assert [m.text for m in newest.messages] == [f"m{i}" for i in range(15, 25)]
    assert newest.has_more
    older = store.page("alice", "bob", before=newest.messages[0].id, limit=10)
    assert [m.text for m in older.messages] == [f"m{i}" for i in range(5, 15)]
    oldest = store.page("alice", "bob", before=older.messages[0].id, limit=10)
    assert [m.text for m in oldest.messages] == [f"m{i}" for i in range(5)]
    assert not oldest.has_more
    forward = store.page("bob", "alice", after=oldest.messages[-1].id, limit=3)
    assert [m.text for m in forward.messages] == ["m5", "m6", "m7"]
    assert forward.has_more
    assert forward.messages[0].sender in ("alice", "bob")


def test_a_cursor_that_is_malformed_unknown_or_of_another_conversation_is_refused(store):
    mine = message("alice", "bob", "ours")
    theirs = message("carol", "dave", "theirs")
    store.ingest([mine, theirs])
    for cursor in ("not an id!", str(uuid.uuid4()), theirs.id):
        with pytest.raises(CursorError):
            store.page("alice", "bob", before=cursor)
    with pytest.raises(CursorError):
        store.sync("alice", after=theirs.id)  # not a message of alice's


def test_read_receipts_set_unread_counts_and_the_senders_status(store):
    sent = [message("alice", "bob", f"m{i}", i) for i in range(4)]
    store.ingest(sent)
    [summary] = store.conversations("bob")
    assert (summary.peer, summary.unread, summary.last_message.text) == ("alice", 4, "m3")
    store.ingest([receipt(sent[0], "delivered"), receipt(sent[2], "read")])
    [summary] = store.conversations("bob")
    assert summary.unread == 1  # read up to m2
    statuses = [m.status for m in store.page("alice", "bob").messages]
    assert statuses == ["read", "read", "read", "accepted"]


def test_with_read_receipts_off_the_sender_sees_delivered_and_the_reader_read(store):
    [m] = [message("alice", "bob", "hi")]
    store.ingest([m])
    store.ingest([receipt(m, "read", notify=False)])
    assert store.page("alice", "bob").messages[0].status == "delivered"
    assert store.page("bob", "alice").messages[0].status == "read"
    assert store.conversations("bob")[0].unread == 0
    assert store.sync("alice").receipts == []  # the sender's devices hear nothing
    assert [r.status for r in store.sync("bob").receipts] == ["read"]  # the reader's do


def test_a_receipt_from_someone_else_than_the_recipient_changes_nothing(store):
    m = message("alice", "bob", "hi")
    store.ingest([m])
    forged = IngestedReceipt(ReceiptNotice(message_id=m.id, reader="mallory", status="read", at=T0))
    assert store.ingest([forged]) == 0
    assert store.page("alice", "bob").messages[0].status == "accepted"


def test_sync_gives_sent_received_and_receipts_after_a_cursor(store):
    first = message("alice", "bob", "one")
    store.ingest([first])
    later = [message("bob", "alice", "two"), message("alice", "carol", "three")]
    store.ingest(later)
    store.ingest([receipt(later[0], "read")])
    page = store.sync("alice", after=first.id)
    assert [m.text for m in page.messages] == ["two", "three"]
    assert [(r.reader, r.status) for r in page.receipts] == [("alice", "read")]
    assert not page.has_more
    assert [m.text for m in store.sync("alice", limit=2).messages] == ["one", "two"]
    assert store.sync("alice", limit=2).has_more


def test_forgetting_a_user_keeps_what_others_hold_and_a_new_namesake_sees_nothing(store):
    store.ingest([message("alice", "bob", "to bob"), message("alice", "alice", "note")])
    store.ingest([message("bob", "alice", "to alice")])
    store.forget_user("alice")
    assert [m.text for m in store.page("bob", "alice").messages] == ["to bob", "to alice"]
    assert [c.peer for c in store.conversations("bob")] == ["alice"]
    assert store.conversations("alice") == []
    assert store.page("alice", "bob").messages == []
    assert store.page("alice", "alice").messages == []
    assert store.sync("alice").messages == []
    store.ingest([message("bob", "alice", "hello, new alice")])
    assert [m.text for m in store.page("alice", "bob").messages] == ["hello, new alice"]


def test_the_store_reopens_with_its_data_and_numbers_on(store, tmp_path):
    store.ingest([message("alice", "bob", "before")])
    again = Store(store.engine)  # a restarted archive: migrations are already applied
    again.ingest([message("alice", "bob", "after")])
    assert [m.text for m in again.page("bob", "alice").messages] == ["before", "after"]
