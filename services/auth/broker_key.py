"""The broker API behind a key in its path: `/<key>/broker/*` is served, anything else is 404.

RabbitMQ's HTTP auth backend (3.10 to 4.x) sends no credentials and no fixed extra field of
its own, and cannot use a unix socket: all it has is the URLs in its config. So the key goes
into those URLs' path, which only the broker's config file (mode 0600) holds. A local program
that finds the listener's port but not the key learns nothing and cannot use it as a password
oracle; a refusal is logged (at most one line a minute, so a flood cannot flood the log).
"""

from __future__ import annotations

import hmac
import logging
import time

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

LOG_INTERVAL_SECONDS = 60.0


class RequireKey:
    """ASGI middleware: pass `/<key>/rest` on as `/rest`; answer everything else 404."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        if not key or "/" in key:
            raise ValueError("the broker API key must be a non-empty path segment")
        self._app = app
        self._key = key.encode()
        self._refused = 0
        self._last_log = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        segment, _, rest = scope["path"].removeprefix("/").partition("/")
        if hmac.compare_digest(segment.encode(), self._key):
            inner = dict(scope)
            inner["path"] = "/" + rest
            inner["raw_path"] = inner["path"].encode()
            await self._app(inner, receive, send)
            return
        self._note_refusal(scope)
        await PlainTextResponse("not found", status_code=404)(scope, receive, send)

    def _note_refusal(self, scope: Scope) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            client = scope.get("client")
            logger.warning(
                "refused %d request(s) to the broker API without its key (last from %s)",
                self._refused,
                client[0] if client else "unknown",
            )
            self._refused = 0
            self._last_log = now
