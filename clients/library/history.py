"""The local history of one user: every message sent and received, in SQLite.

Rows are keyed by the server's message id, so a message the broker delivers twice (the
client died before its ack) is stored once, and `shown` remembers whether it was already
put in front of the person, so it is shown once too. Writes are committed before they
return: the caller acks the broker only after that. `store_received_many` takes what one
delivery batch brought in one transaction: one commit (and fsync) for up to a few hundred
messages instead of one each.

A note to self (a message whose sender and recipient are the owner) is one row: the send
stores it unshown, so `inbox`/`listen` show it once when it arrives like any message, and its
arrival marks it delivered rather than adding a second, `received` row.

A message this user sent from another device (a carbon: from the owner to someone else)
is stored like one sent here. Statuses of what the owner sent only ever go up (queued <
accepted < delivered < read), and a receipt counts only when its reader is the message's
recipient (the broker checks who published it; #9 item 9). A `read` receipt means "read up
to this message": it covers the earlier ones of that conversation too. Received messages
carry `read`, set when shown here or read on another device of the owner.

The same database caches other people's display names, and keeps small per-account state
(the sync cursor, cached settings, which conversations were filled from the server).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from clients.library.state import private_dir
from protocol.conversations import ArchivedMessage
from protocol.messages import DeliveredMessage, ReceiptNotice

Status = Literal["received", "queued", "accepted", "delivered", "read"]
# How far a message the owner sent has come; a status never goes down.
RANK = {"queued": 0, "accepted": 1, "delivered": 2, "read": 3}
SCHEMA_VERSION = 2
DISPLAY_NAME_TTL = timedelta(days=1)
_IDS_PER_QUERY = 500  # below SQLite's limit on bound parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id         TEXT PRIMARY KEY,
    client_id  TEXT,
    sender     TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    text       TEXT NOT NULL,
    sent_at    TEXT NOT NULL,
    status     TEXT NOT NULL,
    shown      INTEGER NOT NULL DEFAULT 0,
    stored_at  TEXT NOT NULL,
    read       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (sent_at, id);
CREATE TABLE IF NOT EXISTS early_receipts (
    message_id TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    reader     TEXT
);
CREATE TABLE IF NOT EXISTS account_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS filled_peers (
    peer TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS display_names (
    username     TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    fetched_at   TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredMessage:
    id: str
    client_id: str | None
    sender: str
    recipient: str
    text: str
    sent_at: datetime
    status: Status
    shown: bool
    read: bool = False

    def to_json(self) -> dict[str, str | None]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "from": self.sender,
            "to": self.recipient,
            "text": self.text,
            "sent_at": self.sent_at.isoformat(),
            "status": self.status,
        }


def _utc_text(moment: datetime) -> str:
    """A fixed-width UTC timestamp, so that text order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class History:
    """One user's history database; safe to share between the threads of one process."""

    def __init__(self, path: Path, owner: str, clock: Callable[[], datetime] = _utc_now) -> None:
        private_dir(path.parent)
        self.path = path
        self.owner = owner
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _migrate(self._db)
            self._db.commit()
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _now(self) -> str:
        return _utc_text(self._clock())

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- messages ----------------------------------------------------------------------------

    def store_received_many(
        self,
        messages: Sequence[DeliveredMessage | ArchivedMessage],
        *,
        shown: bool = False,
    ) -> list[StoredMessage]:
        """Store each message unless it is there already, in one transaction (one commit,
        one fsync); the stored rows in the order of `messages` (a message given twice: its
        row twice). A carbon (from the owner to someone else) is stored as sent by the owner.
        An ArchivedMessage (from the server) also brings the recipient's state of it.
        `shown`: stored as already shown (history filled from the server, not news)."""
        if not messages:
            return []
        stored_at = self._now()
        rows: dict[str, sqlite3.Row] = {}
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO messages (id, client_id, sender, recipient, text,"
                " sent_at, status, shown, stored_at, read) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.id,
                        m.client_id,
                        m.sender,
                        m.to,
                        m.text,
                        _utc_text(m.sent_at),
                        self._arrival_status(m),
                        int(shown),
                        stored_at,
                        int(isinstance(m, ArchivedMessage) and m.status == "read"),
                    )
                    for m in messages
                ],
            )
            self._db.executemany(  # a note to self the send stored first: it has arrived
                "UPDATE messages SET status = 'delivered' WHERE id = ? AND status IN"
                " ('accepted', 'queued')",
                [(m.id,) for m in messages if self._is_note(m.sender, m.to)],
            )
            for m in messages:
                if isinstance(m, ArchivedMessage) and m.status != "accepted":
                    self._apply_state(m)
            self._apply_early(m.id for m in messages)
            ids = list(dict.fromkeys(m.id for m in messages))
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(
                    f"SELECT * FROM messages WHERE id IN ({marks})",  # marks: only "?"s
                    chunk,
                ):
                    rows[row["id"]] = row
        return [_row(rows[m.id]) for m in messages]

    def _arrival_status(self, message: DeliveredMessage | ArchivedMessage) -> Status:
        if self._is_note(message.sender, message.to):
            return "delivered"
        if message.sender == self.owner:  # a carbon: sent from another device
            if isinstance(message, ArchivedMessage):
                return message.status
            return "accepted"
        return "received"

    def _apply_state(self, message: ArchivedMessage) -> None:
        """The server's state of a message already stored here: only ever upward."""
        if message.sender == self.owner and message.to != self.owner:
            self._raise_status([message.id], message.status)
        elif message.to == self.owner and message.status == "read":
            self._db.execute("UPDATE messages SET read = 1 WHERE id = ?", (message.id,))

    def _raise_status(self, ids: Sequence[str], status: str) -> list[str]:
        """Raise the status of the owner's messages `ids` to `status`; the ids raised."""
        lower = [name for name, rank in RANK.items() if rank < RANK[status]]
        raised = []
        for message_id in ids:
            cursor = self._db.execute(
                f"UPDATE messages SET status = ? WHERE id = ? AND sender = ?"
                f" AND status IN ({','.join('?' * len(lower))})",  # only "?"s
                (status, message_id, self.owner, *lower),
            )
            if cursor.rowcount:
                raised.append(message_id)
        return raised

    def _apply_early(self, ids: Iterable[str]) -> None:
        """Receipts that came before their message: apply them now that it is here."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return
        if self._db.execute("SELECT 1 FROM early_receipts LIMIT 1").fetchone() is None:
            return
        for message_id in wanted:
            early = self._db.execute(
                "DELETE FROM early_receipts WHERE message_id = ? RETURNING status, reader",
                (message_id,),
            ).fetchone()
            if early is not None:
                self._apply_receipt(message_id, early["reader"], early["status"], keep=False)

    def _is_note(self, sender: str, recipient: str) -> bool:
        return sender == recipient == self.owner

    def is_carbon(self, message: StoredMessage) -> bool:
        """Sent by the owner to someone else (from this device or another one)."""
        return message.sender == self.owner and message.recipient != self.owner

    def mark_shown_many(self, message_ids: Sequence[str]) -> None:
        """Record that these were put in front of the person: one transaction."""
        if not message_ids:
            return
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE messages SET shown = 1 WHERE id = ?", [(i,) for i in message_ids]
            )

    def store_sent(
        self,
        message_id: str,
        *,
        to: str,
        text: str,
        sent_at: datetime,
        client_id: str | None = None,
        status: Status = "accepted",
    ) -> StoredMessage:
        """Store a message this user sent (`accepted`, or `queued` if not yet answered)."""
        with self._lock, self._db:
            # A note to self is shown when it arrives, like any message: stored unshown.
            shown = 0 if self._is_note(self.owner, to) else 1
            self._db.execute(
                "INSERT OR IGNORE INTO messages"
                " (id, client_id, sender, recipient, text, sent_at, status, shown, stored_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    client_id,
                    self.owner,
                    to,
                    text,
                    _utc_text(sent_at),
                    status,
                    shown,
                    self._now(),
                ),
            )
            if status == "accepted":  # its carbon came first, or it was queued before
                self._raise_status([message_id], "accepted")
            self._apply_early([message_id])
            row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _row(row)

    def apply_receipt(self, notice: ReceiptNotice) -> list[StoredMessage]:
        """A receipt from the inbox or the server: the owner's messages it moved on (for the
        screen). Counted only when its reader is the message's recipient; a `read` from the
        owner (another device read it) marks received messages read. A receipt for a message
        not stored yet is kept until the message comes."""
        with self._lock, self._db:
            ids = self._apply_receipt(notice.message_id, notice.reader, notice.status, keep=True)
            rows = [
                self._db.execute("SELECT * FROM messages WHERE id = ?", (i,)).fetchone()
                for i in ids
            ]
        return [_row(row) for row in rows if row is not None]

    def mark_delivered(self, message_id: str, reader: str | None = None) -> StoredMessage | None:
        """A `delivered` receipt for one message (apply_receipt without a notice)."""
        with self._lock, self._db:
            ids = self._apply_receipt(message_id, reader, "delivered", keep=True)
            row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _row(row) if ids and row is not None else None

    def _apply_receipt(
        self, message_id: str, reader: str | None, status: str, *, keep: bool
    ) -> list[str]:
        row = self._db.execute(
            "SELECT sender, recipient FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            if keep:  # the receipt overtook the message (or our own record of the send)
                self._db.execute(
                    "INSERT INTO early_receipts (message_id, status, reader) VALUES (?, ?, ?)"
                    " ON CONFLICT (message_id) DO UPDATE SET status = excluded.status,"
                    " reader = excluded.reader WHERE excluded.status = 'read'",
                    (message_id, status, reader),
                )
            return []
        sender, recipient = row["sender"], row["recipient"]
        if sender == self.owner and recipient != self.owner:
            if reader is not None and reader != recipient:
                return []  # only the recipient can say it got or read a message
            if status != "read":
                return self._raise_status([message_id], status)
            earlier = [
                r["id"]
                for r in self._db.execute(
                    "SELECT id FROM messages WHERE sender = ? AND recipient = ? AND id <= ?"
                    " AND status != 'read'",
                    (self.owner, recipient, message_id),
                )
            ]
            return self._raise_status(earlier, "read")
        if recipient == self.owner and reader == self.owner and status == "read":
            self._db.execute(  # read on another device of the owner: up to this one
                "UPDATE messages SET read = 1 WHERE recipient = ? AND sender = ? AND id <= ?",
                (self.owner, sender, message_id),
            )
        return []

    def mark_read(self, message_ids: Sequence[str]) -> None:
        """The owner read these received messages here."""
        if not message_ids:
            return
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE messages SET read = 1 WHERE id = ? AND recipient = ?",
                [(i, self.owner) for i in message_ids],
            )

    def conversation(
        self, peer: str, limit: int | None = None, *, before: str | None = None
    ) -> list[StoredMessage]:
        """Messages between the owner and `peer`, oldest first (the last `limit` of them;
        with `before`, of those with a smaller id)."""
        query = (
            "SELECT * FROM messages WHERE ((sender = :me AND recipient = :peer)"
            " OR (sender = :peer AND recipient = :me))"
        )
        params: dict[str, object] = {"me": self.owner, "peer": peer}
        if before is not None:
            query += " AND id < :before"
            params["before"] = before
        query += " ORDER BY sent_at DESC, id DESC"
        if limit is not None:
            query += " LIMIT :limit"
            params["limit"] = limit
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_row(row) for row in reversed(rows)]

    def oldest_id(self, peer: str) -> str | None:
        """The smallest message id of the conversation with `peer` (where paging back starts)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(id) AS id FROM messages WHERE (sender = :me AND recipient = :peer)"
                " OR (sender = :peer AND recipient = :me)",
                {"me": self.owner, "peer": peer},
            ).fetchone()
        return None if row is None or row["id"] is None else str(row["id"])

    def newest_id_with(self, peer: str) -> str | None:
        """The greatest message id of the conversation with `peer`."""
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(id) AS id FROM messages WHERE (sender = :me AND recipient = :peer)"
                " OR (sender = :peer AND recipient = :me)",
                {"me": self.owner, "peer": peer},
            ).fetchone()
        return None if row is None or row["id"] is None else str(row["id"])

    def count(self, peer: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE (sender = :me AND recipient = :peer)"
                " OR (sender = :peer AND recipient = :me)",
                {"me": self.owner, "peer": peer},
            ).fetchone()
        return int(row[0])

    def get(self, message_id: str) -> StoredMessage | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return None if row is None else _row(row)

    def peers(self) -> list[str]:
        """Everyone this user has exchanged messages with, most recent first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT CASE WHEN sender = :me THEN recipient ELSE sender END AS peer,"
                " MAX(sent_at) AS last FROM messages GROUP BY peer ORDER BY last DESC",
                {"me": self.owner},
            ).fetchall()
        return [str(row["peer"]) for row in rows]

    def summaries(self) -> list[LocalSummary]:
        """The conversations as the local history knows them, newest first."""
        result = []
        for peer in self.peers():
            [last] = self.conversation(peer, 1)
            with self._lock:
                unread = self._db.execute(
                    "SELECT COUNT(*) FROM messages WHERE sender = ? AND recipient = ? AND read = 0",
                    (peer, self.owner),
                ).fetchone()[0]
            result.append(LocalSummary(peer, last, int(unread) if peer != self.owner else 0))
        return result

    def newest_id(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM messages").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    # -- per-account state -------------------------------------------------------------------

    def state(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM account_state WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else str(row["value"])

    def set_state(self, key: str, value: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO account_state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def advance_state(self, key: str, value: str) -> None:
        """Set `key` to `value` unless it holds a greater one (a cursor never goes back)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO account_state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                " WHERE excluded.value > account_state.value",
                (key, value),
            )

    def filled(self, peer: str) -> bool:
        """Whether the conversation with `peer` was paged back to its beginning."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM filled_peers WHERE peer = ?", (peer,)).fetchone()
        return row is not None

    def mark_filled(self, peer: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO filled_peers (peer) VALUES (?)", (peer,))

    # -- display names -----------------------------------------------------------------------

    def cached_display_name(
        self, username: str, *, max_age: timedelta = DISPLAY_NAME_TTL
    ) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT display_name, fetched_at FROM display_names WHERE username = ?",
                (username,),
            ).fetchone()
        if row is None:
            return None
        fetched_at = datetime.fromisoformat(row["fetched_at"])
        if self._clock() - fetched_at > max_age:
            return None
        return str(row["display_name"])

    def any_display_name(self, username: str) -> str | None:
        """The cached name however old: better than nothing when the server is away."""
        with self._lock:
            row = self._db.execute(
                "SELECT display_name FROM display_names WHERE username = ?", (username,)
            ).fetchone()
        return None if row is None else str(row["display_name"])

    def remember_display_name(self, username: str, display_name: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO display_names (username, display_name, fetched_at) VALUES (?, ?, ?)"
                " ON CONFLICT (username) DO UPDATE SET"
                " display_name = excluded.display_name, fetched_at = excluded.fetched_at",
                (username, display_name, self._now()),
            )


def _row(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(
        id=row["id"],
        client_id=row["client_id"],
        sender=row["sender"],
        recipient=row["recipient"],
        text=row["text"],
        sent_at=datetime.fromisoformat(row["sent_at"]),
        status=row["status"],
        shown=bool(row["shown"]),
        read=bool(row["read"]),
    )


@dataclass(frozen=True)
class LocalSummary:
    """A conversation as the local history knows it."""

    peer: str
    last: StoredMessage
    unread: int


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database an older client wrote up to SCHEMA_VERSION."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    if "read" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN read INTEGER NOT NULL DEFAULT 0")
    early = {row[1] for row in db.execute("PRAGMA table_info(early_receipts)")}
    if "reader" not in early:
        db.execute("ALTER TABLE early_receipts ADD COLUMN reader TEXT")
    db.execute("UPDATE messages SET status = 'accepted' WHERE status = 'sent'")
    db.execute("CREATE INDEX IF NOT EXISTS messages_by_peer ON messages (sender, recipient, id)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
