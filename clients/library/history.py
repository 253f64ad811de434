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

The same database caches other people's display names.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from clients.library.state import private_dir
from protocol.messages import DeliveredMessage

Status = Literal["received", "queued", "sent", "delivered"]
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
    stored_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (sent_at, id);
CREATE TABLE IF NOT EXISTS early_receipts (
    message_id TEXT PRIMARY KEY,
    status     TEXT NOT NULL
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

    def store_received_many(self, messages: Sequence[DeliveredMessage]) -> list[StoredMessage]:
        """Store each message unless it is there already, in one transaction (one commit,
        one fsync); the stored rows in the order of `messages` (a message given twice: its
        row twice)."""
        if not messages:
            return []
        stored_at = self._now()
        rows: dict[str, sqlite3.Row] = {}
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO messages"
                " (id, client_id, sender, recipient, text, sent_at, status, shown, stored_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                [
                    (
                        m.id,
                        m.client_id,
                        m.sender,
                        m.to,
                        m.text,
                        _utc_text(m.sent_at),
                        "delivered" if self._is_note(m.sender, m.to) else "received",
                        stored_at,
                    )
                    for m in messages
                ],
            )
            self._db.executemany(  # a note to self the send stored first: it has arrived
                "UPDATE messages SET status = 'delivered' WHERE id = ? AND status IN"
                " ('sent', 'queued')",
                [(m.id,) for m in messages if self._is_note(m.sender, m.to)],
            )
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

    def _is_note(self, sender: str, recipient: str) -> bool:
        return sender == recipient == self.owner

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
        status: Status = "sent",
    ) -> StoredMessage:
        """Store a message this user sent (status `sent`, or `queued` if not yet accepted)."""
        with self._lock, self._db:
            early = self._db.execute(
                "DELETE FROM early_receipts WHERE message_id = ? RETURNING status", (message_id,)
            ).fetchone()
            if early is not None and status == "sent":
                status = "delivered"
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
            row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _row(row)

    def mark_delivered(self, message_id: str) -> StoredMessage | None:
        """Record a delivery receipt; the message, if it was ours and newly delivered."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "UPDATE messages SET status = 'delivered'"
                " WHERE id = ? AND sender = ? AND status IN ('sent', 'queued')",
                (message_id, self.owner),
            )
            if cursor.rowcount:
                row = self._db.execute(
                    "SELECT * FROM messages WHERE id = ?", (message_id,)
                ).fetchone()
                return _row(row)
            known = self._db.execute(
                "SELECT 1 FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if known is None:  # the receipt overtook our own record of the send
                self._db.execute(
                    "INSERT OR IGNORE INTO early_receipts (message_id, status) VALUES (?, ?)",
                    (message_id, "delivered"),
                )
        return None

    def conversation(self, peer: str, limit: int | None = None) -> list[StoredMessage]:
        """Messages between the owner and `peer`, oldest first (the last `limit` of them)."""
        query = (
            "SELECT * FROM messages"
            " WHERE (sender = :me AND recipient = :peer) OR (sender = :peer AND recipient = :me)"
            " ORDER BY sent_at DESC, id DESC"
        )
        params: dict[str, object] = {"me": self.owner, "peer": peer}
        if limit is not None:
            query += " LIMIT :limit"
            params["limit"] = limit
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_row(row) for row in reversed(rows)]

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
    )
