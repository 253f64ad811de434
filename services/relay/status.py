"""What the relay has done and where it stands, as counters and as a JSON status file.

`Counters` are bumped on the hot path (plain attributes). `RelayStatus` is the file
MESSENGER_RELAY_STATUS_FILE names, rewritten whole (write, then rename) whenever the state
changes and at most every MESSENGER_RELAY_STATUS_INTERVAL_SECONDS while it runs: readiness
is `state == "consuming"`, and monitoring or a test reads numbers here instead of parsing
log lines. Nothing in it is secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

State = Literal["starting", "connecting", "consuming", "reconnecting", "stopped", "failed"]


@dataclass
class Counters:
    relayed: int = 0
    receipts: int = 0
    unknown_recipient: int = 0
    inbox_full: int = 0
    held: int = 0  # refused while the inbox was unavailable: kept and published again
    answers_dropped: int = 0  # for a sender whose connection was on a node that is down
    # a reply-to address naming a node the relay does not know to be up (forged): not answered
    answers_unproven: int = 0
    invalid: int = 0
    dead_lettered: int = 0  # poison (unreadable, undecodable) moved to relay.dead
    dead_letter_refused: int = 0  # poison relay.dead refused (full): dropped
    rate_limited: int = 0  # refused for the sender's (or the sender->recipient) rate limit

    def line(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


@dataclass
class StopReport:
    """How the last stop went."""

    graceful: bool = False  # consumers cancelled on an open channel, in-flight work finished
    in_flight: int = 0  # publishes awaiting confirms (and held messages) when it began
    unconfirmed: int = 0  # left unsettled when the connection closed: redelivered later


@dataclass
class Lifecycle:
    """Where the relay's connection stands, and how it got there."""

    state: State = "starting"
    node: str = ""  # host:port in use, or tried next
    consuming_sessions: int = 0  # times every shard's consumer was confirmed
    reconnects: int = 0  # times the relay waited to connect again
    unreachable: int = 0  # connect attempts that found no broker
    login_refusals: int = 0
    connections_lost: int = 0
    last_failure: str | None = None
    stop: StopReport | None = None


class RelayStatus(BaseModel):
    pid: int
    updated_at: datetime
    in_flight: int
    lifecycle: Lifecycle
    counters: Counters

    @classmethod
    def read(cls, path: Path) -> RelayStatus | None:
        """The status a relay last wrote to `path`; None if there is none (yet)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None


class StatusFile:
    """Writes `RelayStatus` to `path` atomically; does nothing without a path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._failed = False

    def write(self, lifecycle: Lifecycle, counters: Counters, in_flight: int) -> None:
        if self.path is None:
            return
        status = RelayStatus(
            pid=os.getpid(),
            updated_at=datetime.now(UTC),
            in_flight=in_flight,
            lifecycle=lifecycle,
            counters=counters,
        )
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            partial.write_text(status.model_dump_json())
            partial.replace(self.path)
            self._failed = False
        except OSError as exc:
            if not self._failed:  # one line per outage, not one per second
                logger.warning("cannot write the status file %s: %s", self.path, exc)
            self._failed = True
            with contextlib.suppress(OSError):
                partial.unlink()
