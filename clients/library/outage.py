"""Being offline, told to a person: a line when it starts, when its cause changes, now and
then while it lasts, and one when it ends.

A client that reconnects for as long as it runs must neither go quiet (the user cannot
tell a dead client from a quiet conversation) nor print a line per attempt (it tries every
second). So `Outage` turns the reconnect loop's events into a few lines a person reads:

    offline: the server at 127.0.0.1:5682 does not answer; trying again in 1 s
    still offline after 30 s: the server at 127.0.0.1:5682 does not answer; trying again in 1 s
    back online after 34 s

`reason()` words a failure without pika's reply tuples. Pure logic, no pika, no threads.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import pika.exceptions

from clients.library.errors import LoginUnchecked

logger = logging.getLogger(__name__)

# While one cause lasts, "still offline" after this many seconds, then every REMIND_EVERY.
REMINDERS = (30.0, 60.0, 120.0, 300.0)
REMIND_EVERY = 600.0


def duration(seconds: float) -> str:
    """`0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _when(retry_in: float) -> str:
    if retry_in <= 0.05:
        return "trying again now"
    shown = f"{retry_in:.1g}" if retry_in < 1 else f"{retry_in:.0f}"
    return f"trying again in {shown} s"


def reason(error: BaseException, where: str) -> str:
    """Why the broker at `where` (host:port) cannot be used, in words."""
    if isinstance(error, LoginUnchecked):
        return str(error)  # the server at … cannot check logins right now (why)
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        if error.reply_code == 320 and "shutdown" in str(error.reply_text).lower():
            return f"the server at {where} is shutting down"  # CONNECTION_FORCED, broker shutdown
        return f"the server at {where} closed the connection"
    if isinstance(error, pika.exceptions.StreamLostError):
        return f"lost the connection to the server at {where}"
    cause = _socket_error(error)
    if cause is not None and cause.errno == errno.ECONNREFUSED:
        return f"the server at {where} does not answer (connection refused)"
    if isinstance(error, pika.exceptions.AMQPHeartbeatTimeout):
        return f"the server at {where} stopped answering"
    if cause is not None or isinstance(error, TimeoutError):
        return f"cannot reach the server at {where}"
    if isinstance(error, pika.exceptions.IncompatibleProtocolError):
        return f"the server at {where} is not ready (starting or stopping)"
    return f"the server at {where} does not answer"


def _socket_error(error: BaseException) -> OSError | None:
    """The OSError at the bottom of pika's layers, if there is one."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError):
            return seen
        nested = getattr(seen, "exceptions", None)  # AMQPConnectionWorkflowFailed
        if nested:
            seen = nested[-1]
            continue
        inner = getattr(seen, "exception", None)  # AMQPConnectorSocketConnectError
        if isinstance(inner, BaseException):
            seen = inner
            continue
        args = [a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)]
        seen = args[0] if args else seen.__cause__
    return None


class Outage:
    """The state of one connection seen by a person: online, or offline since when and why."""

    def __init__(
        self,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report: Callable[[str], None] = report or logger.info
        self._clock = clock
        self.since: float | None = None  # None: online
        self._reason: str | None = None
        self._reminder = 0  # index into REMINDERS of the next one

    @property
    def offline(self) -> bool:
        return self.since is not None

    def failed(self, why: str, retry_in: float) -> None:
        """An attempt failed (or the connection was lost); the next is in `retry_in` s."""
        now = self._clock()
        if self.since is None:
            self.since, self._reason, self._reminder = now, why, 0
            self.report(f"offline: {why}; {_when(retry_in)}")
            return
        if why != self._reason:
            self._reason = why
            self.report(f"still offline: {why}; {_when(retry_in)}")
            return
        elapsed = now - self.since
        if elapsed >= self._next_reminder():
            self._reminder += 1
            self.report(f"still offline after {duration(elapsed)}: {why}; {_when(retry_in)}")

    def recovered(self) -> None:
        """Connected again."""
        if self.since is None:
            return
        elapsed = self._clock() - self.since
        self.since, self._reason = None, None
        self.report(f"back online after {duration(elapsed)}")

    def _next_reminder(self) -> float:
        if self._reminder < len(REMINDERS):
            return REMINDERS[self._reminder]
        return REMINDERS[-1] + REMIND_EVERY * (self._reminder - len(REMINDERS) + 1)
