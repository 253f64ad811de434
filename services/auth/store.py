"""SQLite storage of users and sessions.

One connection shared by the service's threads behind a lock (every operation is one short
statement; password hashing happens outside). WAL mode lets `messenger-auth import` write
while the server runs. Sessions are stored by the SHA-256 of their token, never the token.
Times are Unix seconds. The file holds password hashes: it is made 0600 (SQLite gives its
-wal and -shm files the same mode), and a directory created for it 0700.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
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
CREATE TABLE IF NOT EXISTS known_addresses (
    username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    address    TEXT NOT NULL,
    last_login REAL NOT NULL,
    PRIMARY KEY (username, address)
);
"""

# Addresses kept per user (the most recent logins): enough for home, work, phone, travel.
KNOWN_ADDRESSES_PER_USER = 16


@dataclass(frozen=True)
class UserRecord:
    username: str
    display_name: str
    password_hash: str
    created_at: float


class Store:
    def __init__(self, path: Path) -> None:
        _private_file(path)
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

    # -- addresses users logged in from (services/auth/ratelimit.py) -----------------------

    def remember_address(self, username: str, address: str, at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO known_addresses (username, address, last_login) VALUES (?, ?, ?)"
                " ON CONFLICT (username, address) DO UPDATE SET last_login = excluded.last_login",
                (username, address, at),
            )
            self._db.execute(
                "DELETE FROM known_addresses WHERE username = ? AND address NOT IN ("
                " SELECT address FROM known_addresses WHERE username = ?"
                " ORDER BY last_login DESC LIMIT ?)",
                (username, username, KNOWN_ADDRESSES_PER_USER),
            )

    def address_known(self, username: str, address: str, since: float) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM known_addresses"
                " WHERE username = ? AND address = ? AND last_login >= ?",
                (username, address, since),
            ).fetchone()
        return row is not None

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

    def session_owner(self, token_hash: str) -> str | None:
        """The user of a session, live or expired, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM sessions WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        return str(row[0]) if row else None

    def live_session_hashes(self, username: str, now: float) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT token_hash FROM sessions WHERE username = ? AND expires_at > ?",
                (username, now),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def delete_session(self, token_hash: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        return cursor.rowcount > 0

    def delete_expired_sessions(self, now: float) -> int:
        with self._lock:
            cursor = self._db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        return cursor.rowcount


def _private_file(path: Path) -> None:
    """Create `path`'s directory (0700) and the file (0600) for the owner only; an existing
    file is set to 0600, an existing directory that others may enter is logged, not changed
    (it may be shared, like /tmp)."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # mkdir's mode is masked by the umask
    elif directory.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the directory of the user store %s is open to other users", directory)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            file.chmod(0o600)
