"""SQLite storage of users and sessions.

One connection shared by the service's threads behind a lock (every operation is one short
statement; password hashing happens outside). WAL mode lets `messenger-auth import` write
while the server runs. Sessions are stored by the SHA-256 of their token, never the token.
Times are Unix seconds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions(expires_at);
"""


@dataclass(frozen=True)
class UserRecord:
    username: str
    display_name: str
    password_hash: str
    created_at: float


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- users -----------------------------------------------------------------------------

    def add_user(self, user: UserRecord) -> bool:
        """Insert `user`; False (and nothing changed) when the name is taken."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO users (username, display_name, password_hash, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (user.username, user.display_name, user.password_hash, user.created_at),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def get_user(self, username: str) -> UserRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT username, display_name, password_hash, created_at"
                " FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return UserRecord(*row) if row else None

    def all_users(self) -> list[UserRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT username, display_name, password_hash, created_at"
                " FROM users ORDER BY username"
            ).fetchall()
        return [UserRecord(*row) for row in rows]

    def count_users(self) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        return count

    def set_password_hash(self, username: str, password_hash: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username)
            )

    # -- sessions --------------------------------------------------------------------------

    def add_session(self, token_hash: str, username: str, expires_at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions (token_hash, username, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, username, time.time(), expires_at),
            )

    def session_user(self, token_hash: str, now: float) -> str | None:
        """The owner of a live (unexpired) session, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM sessions WHERE token_hash = ? AND expires_at > ?",
                (token_hash, now),
            ).fetchone()
        return str(row[0]) if row else None

    def session(self, token_hash: str, now: float) -> tuple[str, float] | None:
        """The owner and expiry (epoch seconds) of a live session, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT username, expires_at FROM sessions WHERE token_hash = ? AND expires_at > ?",
                (token_hash, now),
            ).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def delete_session(self, token_hash: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        return cursor.rowcount > 0

    def delete_expired_sessions(self, now: float) -> int:
        with self._lock:
            cursor = self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        return cursor.rowcount
