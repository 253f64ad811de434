"""The archive's tables (SQLAlchemy Core) and their migrations, one code path for SQLite and
PostgreSQL.

- `messages`: every message once, by `id`; `seq` is the archive's own order (assigned at
  ingest, strictly increasing), the key of every page. `pair` (the two usernames, sorted,
  joined by a space, which no username holds) makes a conversation one index range: a page
  of a 100,000-message conversation is one index seek on (pair, seq), whatever the size.
- `receipts`: delivered/read receipts, once per (message, reader, status); `sender` is the
  original sender (who is told), `notify_sender` false when the reader turned read receipts
  off (then only the reader's devices learn it).
- `conversations`: per user and peer, the newest message's seq and how far the user has
  read (`read_seq`), and how far the peer may see it read (`shared_read_seq`).
- `user_floors`: a deleted user's name, and the seq below which nothing is theirs any more
  (a later account of the same name never sees the old one's conversations).
- `schema_migrations`: the versions applied; `migrate()` runs the missing ones in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.engine import Connection

logger = logging.getLogger(__name__)

metadata = MetaData()
# SQLite makes only INTEGER columns 64-bit row ids; BIGINT elsewhere.
Seq = BigInteger().with_variant(Integer(), "sqlite")

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("client_id", String(128)),
    Column("sender", String(32), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("pair", String(80), nullable=False),
    Column("text", Text, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("delivered", Boolean, nullable=False, default=False),
    Index("messages_pair_seq", "pair", "seq"),
    Index("messages_sender_seq", "sender", "seq"),
    Index("messages_recipient_seq", "recipient", "seq"),
)

receipts = Table(
    "receipts",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=False),
    Column("message_id", String(64), nullable=False),
    Column("reader", String(32), nullable=False),
    Column("sender", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("notify_sender", Boolean, nullable=False),
    UniqueConstraint("message_id", "reader", "status", name="receipts_once"),
    Index("receipts_reader_seq", "reader", "seq"),
    Index("receipts_sender_seq", "sender", "seq"),
)

conversations = Table(
    "conversations",
    metadata,
    Column("username", String(32), primary_key=True),
    Column("peer", String(32), primary_key=True),
    Column("last_seq", Seq, nullable=False),
    Column("read_seq", Seq, nullable=False, default=0),
    Column("shared_read_seq", Seq, nullable=False, default=0),
    Index("conversations_user_last", "username", "last_seq"),
)

user_floors = Table(
    "user_floors",
    metadata,
    Column("username", String(32), primary_key=True),
    Column("floor_seq", Seq, nullable=False),
)


def _v1(connection: Connection) -> None:
    for table in (messages, receipts, conversations, user_floors):
        table.create(connection, checkfirst=True)


# version -> what it does; append, never edit a released one.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1}


def pair_of(a: str, b: str) -> str:
    """The conversation key of two users, the same from either side."""
    return " ".join(sorted((a, b)))


def migrate(engine: Engine) -> int:
    """Apply the migrations this database lacks, each in its own transaction; the version."""
    schema_migrations.create(engine, checkfirst=True)
    with engine.connect() as connection:
        applied = set(connection.scalars(select(schema_migrations.c.version)))
    for version in sorted(MIGRATIONS):
        if version in applied:
            continue
        with engine.begin() as connection:
            MIGRATIONS[version](connection)
            connection.execute(
                schema_migrations.insert().values(version=version, applied_at=datetime.now(UTC))
            )
        logger.info("archive schema migrated to version %d", version)
    return max(MIGRATIONS)
