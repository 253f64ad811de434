"""Reading and writing the archive: ingest batches, history pages, sync, deletion.

Every query a client can cause reads one index range: a conversation page seeks (pair, seq),
a sync seeks (sender, seq) and (recipient, seq), the conversation list reads the user's rows
of `conversations`. The `seq` of each message and receipt is assigned here, at ingest, from
one counter (`archive.ingest` has a single active consumer, so one writer); redelivered
entries are recognised by id and skipped, so a batch committed twice changes nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from protocol.conversations import (
    ArchivedMessage,
    ArchivedStatus,
    ConversationSummary,
    MessagePage,
    SyncPage,
)
from protocol.messages import DeliveredMessage, ReceiptNotice
from services.archive.schema import (
    conversations,
    messages,
    migrate,
    pair_of,
    receipts,
    user_floors,
)

logger = logging.getLogger(__name__)

ID_RE = re.compile(r"^[0-9a-fA-F-]{1,64}$")
SYNC_RECEIPTS_MAX = 1000
CONVERSATIONS_MAX = 500


class CursorError(ValueError):
    """A cursor that is malformed or names no message of this conversation/user."""


@dataclass(frozen=True)
class IngestedReceipt:
    notice: ReceiptNotice
    notify_sender: bool = True


Entry = DeliveredMessage | IngestedReceipt


def database_url(url: str) -> str:
    """`postgresql://` means the psycopg (3) driver, the one the project installs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def open_engine(url: str) -> Engine:
    url = database_url(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # No pre-ping (a round trip per request); a connection the server dropped fails one
    # request and is replaced, and none is kept longer than five minutes.
    return create_engine(url, pool_recycle=300, pool_size=5, max_overflow=5)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        migrate(engine)
        self._seq_lock = threading.Lock()
        self._next_seq: int | None = None
        # Deleted users' floors: few, changed only by forget_user here; read on every request.
        with engine.connect() as db:
            self._floors = {
                row.username: int(row.floor_seq) for row in db.execute(select(user_floors))
            }

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(open_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, entries: Sequence[Entry]) -> int:
        """Store a batch in one transaction, in order; entries already stored are skipped.
        Returns how many were new."""
        if not entries:
            return 0
        with self._seq_lock, self.engine.begin() as db:
            if self._next_seq is None:
                self._next_seq = self._max_seq(db) + 1
            start = self._next_seq
            try:
                new = self._ingest(db, entries)
            except BaseException:
                self._next_seq = start  # rolled back: the numbers are free again
                raise
        return new

    def _max_seq(self, db: Connection) -> int:
        top = [
            db.scalar(select(func.max(messages.c.seq))),
            db.scalar(select(func.max(receipts.c.seq))),
            db.scalar(select(func.max(user_floors.c.floor_seq))),
        ]
        return max(int(value or 0) for value in top)

    def _take_seq(self) -> int:
        assert self._next_seq is not None
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _ingest(self, db: Connection, entries: Sequence[Entry]) -> int:
        new_messages = [e for e in entries if isinstance(e, DeliveredMessage)]
        known = self._known_ids(db, [m.id for m in new_messages])
        rows: list[dict[str, Any]] = []
        latest: dict[tuple[str, str], int] = {}
        for message in new_messages:
            if message.id in known:
                continue
            known.add(message.id)
            seq = self._take_seq()
            rows.append(
                {
                    "seq": seq,
                    "id": message.id,
                    "client_id": message.client_id,
                    "sender": message.sender,
                    "recipient": message.to,
                    "pair": pair_of(message.sender, message.to),
                    "text": message.text,
                    "sent_at": message.sent_at,
                    "delivered": message.sender == message.to,
                }
            )
            latest[(message.sender, message.to)] = seq
            latest[(message.to, message.sender)] = seq
        if rows:
            db.execute(insert(messages), rows)
            self._touch_conversations(db, latest)
        count = len(rows)
        for entry in entries:
            if isinstance(entry, IngestedReceipt):
                count += self._apply_receipt(db, entry)
        return count

    def _known_ids(self, db: Connection, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found.update(db.scalars(select(messages.c.id).where(messages.c.id.in_(chunk))))
        return found

    def _touch_conversations(self, db: Connection, latest: dict[tuple[str, str], int]) -> None:
        keys = list(latest)
        existing: set[tuple[str, str]] = set()
        for user in {user for user, _ in keys}:
            peers = [peer for u, peer in keys if u == user]
            existing.update(
                (user, peer)
                for peer in db.scalars(
                    select(conversations.c.peer).where(
                        conversations.c.username == user, conversations.c.peer.in_(peers)
                    )
                )
            )
        fresh = [
            {"username": u, "peer": p, "last_seq": s, "read_seq": 0, "shared_read_seq": 0}
            for (u, p), s in latest.items()
            if (u, p) not in existing
        ]
        if fresh:
            db.execute(insert(conversations), fresh)
        for (user, peer), seq in latest.items():
            if (user, peer) in existing:
                db.execute(
                    update(conversations)
                    .where(conversations.c.username == user, conversations.c.peer == peer)
                    .values(last_seq=seq)
                )

    def _apply_receipt(self, db: Connection, receipt: IngestedReceipt) -> int:
        notice = receipt.notice
        row = db.execute(
            select(messages.c.seq, messages.c.sender, messages.c.recipient).where(
                messages.c.id == notice.message_id
            )
        ).first()
        if row is None or row.recipient != notice.reader:
            # Only the recipient's receipts count; one for an unknown message is dropped.
            logger.info("ignored a %s receipt by %s for %s", notice.status, notice.reader,
                        notice.message_id)  # fmt: skip
            return 0
        done = db.scalar(
            select(func.count())
            .select_from(receipts)
            .where(
                receipts.c.message_id == notice.message_id,
                receipts.c.reader == notice.reader,
                receipts.c.status == notice.status,
            )
        )
        if done:
            return 0
        db.execute(
            insert(receipts).values(
                seq=self._take_seq(),
                message_id=notice.message_id,
                reader=notice.reader,
                sender=row.sender,
                status=notice.status,
                at=notice.at,
                notify_sender=receipt.notify_sender,
            )
        )
        db.execute(update(messages).where(messages.c.seq == row.seq).values(delivered=True))
        if notice.status == "read":
            where = (conversations.c.username == notice.reader) & (
                conversations.c.peer == row.sender
            )
            values: dict[str, Any] = {
                "read_seq": func.max(conversations.c.read_seq, row.seq)
                if db.dialect.name == "sqlite"
                else func.greatest(conversations.c.read_seq, row.seq)
            }
            if receipt.notify_sender:
                values["shared_read_seq"] = (
                    func.max(conversations.c.shared_read_seq, row.seq)
                    if db.dialect.name == "sqlite"
                    else func.greatest(conversations.c.shared_read_seq, row.seq)
                )
            db.execute(update(conversations).where(where).values(**values))
        return 1

    # -- reading -----------------------------------------------------------------------------

    def conversations(self, user: str) -> list[ConversationSummary]:
        """The user's conversations, newest first, each with its last message and unread count."""
        with self.engine.connect() as db:
            floor = self._floor(db, user)
            rows = db.execute(
                select(conversations)
                .where(conversations.c.username == user, conversations.c.last_seq > floor)
                .order_by(conversations.c.last_seq.desc())
                .limit(CONVERSATIONS_MAX)
            ).all()
            result = []
            for row in rows:
                last = db.execute(select(messages).where(messages.c.seq == row.last_seq)).first()
                if last is None:
                    continue
                unread = 0
                if row.peer != user:
                    unread = int(
                        db.scalar(
                            select(func.count())
                            .select_from(messages)
                            .where(
                                messages.c.pair == pair_of(user, row.peer),
                                messages.c.recipient == user,
                                messages.c.seq > max(row.read_seq, floor),
                            )
                        )
                        or 0
                    )
                marks = self._read_marks(db, user, row.peer)
                result.append(
                    ConversationSummary(
                        peer=row.peer,
                        last_message=_archived(last, user, marks),
                        unread=unread,
                        updated_at=utc(last.sent_at),
                    )
                )
        return result

    def page(
        self,
        user: str,
        peer: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> MessagePage:
        """A page of the conversation of `user` with `peer`, oldest to newest: the newest
        `limit` without a cursor, those just before `before`, or just after `after`."""
        if before is not None and after is not None:
            raise CursorError("give at most one of before and after")
        pair = pair_of(user, peer)
        cursor = after if after is not None else before
        if cursor is not None and not ID_RE.fullmatch(cursor):
            raise CursorError(f"cursor {cursor[:80]!r} is not a message id")
        with self.engine.connect() as db:
            floor = self._floor(db, user)
            query = select(messages).where(messages.c.pair == pair, messages.c.seq > floor)
            # The cursor's seq in the same statement (one round trip); an unknown cursor
            # matches nothing, and an empty page is then checked for why.
            at = (
                select(messages.c.seq)
                .where(messages.c.id == cursor, messages.c.pair == pair)
                .scalar_subquery()
            )
            if after is not None:
                query = query.where(messages.c.seq > at).order_by(messages.c.seq.asc())
            else:
                if before is not None:
                    query = query.where(messages.c.seq < at)
                query = query.order_by(messages.c.seq.desc())
            rows = list(db.execute(query.limit(limit + 1)).all())
            if not rows and cursor is not None:
                self._cursor_seq(db, cursor, pair)  # raises for a cursor of no message here
            has_more = len(rows) > limit
            rows = rows[:limit]
            if after is None:
                rows.reverse()
            marks = self._read_marks(db, user, peer)
        return MessagePage(messages=[_archived(r, user, marks) for r in rows], has_more=has_more)

    def sync(self, user: str, *, after: str | None = None, limit: int = 50) -> SyncPage:
        """What the user's devices may have missed after the message `after`: messages to
        and from the user (from any device) and receipts, oldest to newest."""
        with self.engine.connect() as db:
            floor = self._floor(db, user)
            since = floor
            if after is not None:
                since = max(since, self._cursor_seq(db, after, None, user=user))
            sent = db.execute(
                select(messages)
                .where(messages.c.sender == user, messages.c.seq > since)
                .order_by(messages.c.seq)
                .limit(limit + 1)
            ).all()
            got = db.execute(
                select(messages)
                .where(
                    messages.c.recipient == user,
                    messages.c.sender != user,
                    messages.c.seq > since,
                )
                .order_by(messages.c.seq)
                .limit(limit + 1)
            ).all()
            rows = sorted([*sent, *got], key=lambda r: r.seq)
            has_more = len(rows) > limit
            rows = rows[:limit]
            receipt_query = (
                select(receipts)
                .where(
                    receipts.c.seq > since,
                    or_(
                        receipts.c.reader == user,
                        (receipts.c.sender == user) & receipts.c.notify_sender,
                    ),
                )
                .order_by(receipts.c.seq)
                .limit(SYNC_RECEIPTS_MAX)
            )
            if has_more:  # the rest come with the pages after this one
                receipt_query = receipt_query.where(receipts.c.seq < rows[-1].seq)
            notes = db.execute(receipt_query).all()
            marks_by_peer: dict[str, tuple[int, int]] = {}
            archived = []
            for row in rows:
                peer = row.recipient if row.sender == user else row.sender
                if peer not in marks_by_peer:
                    marks_by_peer[peer] = self._read_marks(db, user, peer)
                archived.append(_archived(row, user, marks_by_peer[peer]))
        return SyncPage(
            messages=archived,
            receipts=[
                ReceiptNotice(
                    message_id=n.message_id, reader=n.reader, status=n.status, at=utc(n.at)
                )
                for n in notes
            ],
            has_more=has_more,
        )

    # -- deletion ----------------------------------------------------------------------------

    def forget_user(self, user: str) -> None:
        """A deleted account: its read state, conversation list, notes to self and its own
        receipts go; what it exchanged with others stays in their history. A later account
        of the same name starts after a floor and never sees any of it."""
        with self._seq_lock, self.engine.begin() as db:
            if self._next_seq is None:
                self._next_seq = self._max_seq(db) + 1
            floor = self._take_seq()
            db.execute(delete(conversations).where(conversations.c.username == user))
            db.execute(delete(messages).where(messages.c.pair == pair_of(user, user)))
            db.execute(delete(receipts).where(receipts.c.reader == user))
            db.execute(delete(user_floors).where(user_floors.c.username == user))
            db.execute(insert(user_floors).values(username=user, floor_seq=floor))
        self._floors[user] = floor
        logger.info("forgot the archive of %s", user)

    # -- internals ---------------------------------------------------------------------------

    def _floor(self, _db: Connection, user: str) -> int:
        return self._floors.get(user, 0)

    def _cursor_seq(self, db: Connection, cursor: str, pair: str | None, user: str = "") -> int:
        if not ID_RE.fullmatch(cursor):
            raise CursorError(f"cursor {cursor[:80]!r} is not a message id")
        row = db.execute(
            select(messages.c.seq, messages.c.pair, messages.c.sender, messages.c.recipient).where(
                messages.c.id == cursor
            )
        ).first()
        if row is None:
            raise CursorError(f"no message {cursor} in the archive")
        if pair is not None and row.pair != pair:
            raise CursorError(f"message {cursor} is not in this conversation")
        if pair is None and user not in (row.sender, row.recipient):
            raise CursorError(f"no message {cursor} in the archive")
        return int(row.seq)

    def _read_marks(self, db: Connection, user: str, peer: str) -> tuple[int, int]:
        """(how far `user` has read `peer`'s messages, how far `peer` has let `user` see
        that it read `user`'s), in one query."""
        c = conversations.c
        rows = db.execute(
            select(c.username, c.read_seq, c.shared_read_seq).where(
                ((c.username == user) & (c.peer == peer))
                | ((c.username == peer) & (c.peer == user))
            )
        ).all()
        own = next((r.read_seq for r in rows if r.username == user), 0)
        theirs = next((r.shared_read_seq for r in rows if r.username == peer), 0)
        return int(own or 0), int(theirs or 0)


def _archived(row: Row[Any], viewer: str, marks: tuple[int, int]) -> ArchivedMessage:
    """A stored message as `viewer` sees it: status is the recipient's state of it, `read`
    only as far as the viewer may know (a reader who turned receipts off shows `delivered`)."""
    own_read, their_read = marks
    read_mark = own_read if row.recipient == viewer else their_read
    status: ArchivedStatus = "accepted"
    if row.seq <= read_mark:
        status = "read"
    elif row.delivered:
        status = "delivered"
    # Stored rows were validated at ingest: no second validation per row of a page.
    return ArchivedMessage.model_construct(
        id=row.id,
        client_id=row.client_id,
        sender=row.sender,
        to=row.recipient,
        text=row.text,
        sent_at=utc(row.sent_at),
        status=status,
    )


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC): say so."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
