"""Databases for archive tests: a SQLite file, or a PostgreSQL database of our own.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth; `.ci/run` installs Debian's where
none answers). Each test database has a unique name and is dropped afterwards; a server that
someone else started is never altered otherwise. Where nothing answers on 5432, PostgreSQL
cases are skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_HOST = os.environ.get("MESSENGER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MESSENGER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MESSENGER_TEST_PG_USER", "postgres")


def postgres_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection((PG_HOST, PG_PORT), timeout=1):
        return True
    return False


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database's URL, dropped (with anything still connected) at the end."""
    import psycopg

    name = f"messenger_test_{uuid.uuid4().hex[:12]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')  # name: our own hex, never user input
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def archive_database(kind: str, directory: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'archive.sqlite3'}"
        return
    with postgres_database() as url:
        yield url
