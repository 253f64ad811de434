"""Ending a session ends its AMQP connections, through RabbitMQ's management HTTP API.

Our clients name each connection `messenger client <username> <tag>`, the tag a hash of the
session token's hash (protocol.accounts.connection_name). The auth service can therefore
tell, from the broker's connection list alone, which session opened a connection:

- at logout it closes the connections of that session at once;
- a periodic sweep closes every connection whose tag is no live session of its user (an
  expired session, one revoked while the broker was away, or a revoked token that opened a
  new connection while the broker still cached it as valid).

Closing someone else's connection takes the `administrator` tag in RabbitMQ 3.10 (the
management plugin's DELETE /api/connections/{name} allows the owner or an administrator), so
the `auth` account carries it; the API listens only where the auth service reaches it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from protocol.accounts import parse_connection_name

logger = logging.getLogger(__name__)

CLOSE_REASON = "session ended: log in again"


class BrokerConnections:
    """People's connections as the management API lists them, and closing them."""

    def __init__(
        self,
        urls: Iterable[str],
        user: str,
        password: str,
        vhost: str,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        self.vhost = vhost
        self._client = httpx.Client(
            auth=(user, password), timeout=timeout, trust_env=False, transport=transport
        )

    def close(self) -> None:
        self._client.close()

    def sessions(self) -> list[tuple[str, str, str]]:
        """(connection name, username, session tag) of every connection named for a session
        of the user it is logged in as."""
        found = []
        for row in self._get(f"/api/vhosts/{quote(self.vhost, safe='')}/connections"):
            parsed = parse_connection_name(row.get("user_provided_name"))
            if parsed is None or parsed[0] != row.get("user") or not row.get("name"):
                continue  # not ours, or a name claiming to be another user's
            found.append((str(row["name"]), parsed[0], parsed[1]))
        return found

    def end(self, username: str, tag: str) -> int:
        """Close the connections of one session; how many were closed."""
        closed = 0
        for name, user, session in self.sessions():
            if user == username and session == tag and self._delete(name):
                closed += 1
        if closed:
            logger.info("closed %d connection(s) of an ended session of %s", closed, username)
        return closed

    def sweep(self, live_tags: Callable[[str], set[str]]) -> int:
        """Close every session-named connection whose session is no longer live."""
        closed = 0
        known: dict[str, set[str]] = {}
        for name, user, session in self.sessions():
            if user not in known:
                known[user] = live_tags(user)
            if session not in known[user] and self._delete(name):
                logger.info("closed a connection of %s: its session has ended", user)
                closed += 1
        return closed

    def _get(self, path: str) -> list[dict[str, Any]]:
        last: Exception | None = None
        for url in self.urls:
            try:
                response = self._client.get(
                    url + path, params={"columns": "name,user,user_provided_name"}
                )
                response.raise_for_status()
                rows = response.json()
                return [row for row in rows if isinstance(row, dict)]
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
        raise ManagementUnavailable(f"no management API answered: {last}")

    def _delete(self, name: str) -> bool:
        for url in self.urls:
            try:
                response = self._client.delete(
                    f"{url}/api/connections/{quote(name, safe='')}",
                    headers={"X-Reason": CLOSE_REASON},
                )
            except httpx.HTTPError:
                continue
            if response.status_code in (204, 404):  # 404: it closed meanwhile
                return response.status_code == 204
            logger.warning("closing connection %r: HTTP %d", name, response.status_code)
            return False
        return False


class ManagementUnavailable(Exception):
    """No management API URL answered."""


class SessionEnds(Protocol):
    """Something holding connections by session: the broker's, or the web client's sockets."""

    def end(self, username: str, tag: str) -> int: ...

    def sweep(self, live_tags: Callable[[str], set[str]]) -> int: ...


class SessionSweeper:
    """Every `interval` seconds: drop expired sessions, close what ended sessions hold open.
    Logout asks for its session's connections at once, off the request's thread."""

    def __init__(
        self,
        holders: list[SessionEnds],
        live_tags: Callable[[str], set[str]],
        delete_expired: Callable[[], int],
        interval: float,
    ) -> None:
        self.holders = holders
        self.live_tags = live_tags
        self.delete_expired = delete_expired
        self.interval = interval
        self._stop = threading.Event()
        self._ended: list[tuple[str, str]] = []
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="session-sweeper", daemon=True)
        self._healthy = True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._thread.join(timeout=10)

    def session_ended(self, username: str, tag: str) -> None:
        with self._wake:
            self._ended.append((username, tag))
            self._wake.notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                if not self._ended:
                    self._wake.wait(self.interval)
                ended, self._ended = self._ended, []
            if self._stop.is_set():
                return
            if not ended:
                with contextlib.suppress(Exception):
                    self.delete_expired()
            for holder in self.holders:
                self._once(holder, ended)

    def _once(self, holder: SessionEnds, ended: list[tuple[str, str]]) -> None:
        try:
            for username, tag in ended:
                holder.end(username, tag)
            if not ended:
                holder.sweep(self.live_tags)
        except ManagementUnavailable as exc:
            if self._healthy:
                logger.warning("cannot close ended sessions' connections: %s", exc)
            self._healthy = False
            return
        except Exception:  # a bug must not end the sweeping for good
            logger.exception("the session sweep failed")
            return
        if not self._healthy and isinstance(holder, BrokerConnections):
            logger.info("the management API answers again: ended sessions are swept")
            self._healthy = True
