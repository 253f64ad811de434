"""The web client on the public origin: the page at `/`, its assets, and `/ws`.

`/ws` is a WebSocket proxy to RabbitMQ's Web STOMP listener, which is never published: the
page talks to its own origin only (no CORS, no second port for a user to know, a CSP of
`connect-src 'self'`). The proxy moves frames and nothing else; the broker still
authenticates the tab (the session token as STOMP passcode, checked by our HTTP auth backend)
and enforces what it may read and write.

The built page (web/dist/, see web/bundle.py) is read once at start-up and served from
memory, gzipped when the browser takes it: hashed assets with a year-long cache, the page
itself revalidated (ETag) so a new build is picked up on the next load.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import websockets
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from protocol.accounts import session_tag_of_hash

logger = logging.getLogger(__name__)

# Nothing inline, nothing from elsewhere; Trusted Types make every HTML-from-a-string sink
# (innerHTML and friends) throw, so message text can only ever be text.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE_CACHE = "no-cache"  # revalidate: a new build is seen at once
ASSET_CACHE = "public, max-age=31536000, immutable"  # names carry a content hash

# A STOMP frame from a browser: a message body is at most 64 KiB (protocol.messages), plus
# headers. Anything larger is refused here before it reaches the broker.
MAX_CLIENT_FRAME_BYTES = 256 * 1024
MAX_BROKER_FRAME_BYTES = 1024 * 1024
UPSTREAM_OPEN_TIMEOUT_SECONDS = 5.0
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
SESSION_ENDED_FRAME = "ERROR\nmessage:session ended: log in again\n\n\x00"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    media_type: str
    etag: str

    @classmethod
    def load(cls, path: Path) -> Asset:
        body = path.read_bytes()
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript",):
            media_type += "; charset=utf-8"
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        return cls(
            body=body,
            gzipped=packed if len(packed) < len(body) else None,
            media_type=media_type,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )

    def response(self, request: Request, cache_control: str) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": self.etag,
                   "Vary": "Accept-Encoding"}  # fmt: skip
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = self.body
        if self.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            body = self.gzipped
            headers["Content-Encoding"] = "gzip"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            body = b""
        return Response(body, media_type=self.media_type, headers=headers)


@dataclass(frozen=True)
class WebPage:
    """The built front end, in memory."""

    index: Asset
    assets: dict[str, Asset]

    @classmethod
    def load(cls, directory: Path) -> WebPage:
        assets_dir = directory / "assets"
        assets = {p.name: Asset.load(p) for p in sorted(assets_dir.iterdir()) if p.is_file()}
        return cls(index=Asset.load(directory / "index.html"), assets=assets)


class WebSessions:
    """The open `/ws` sockets of each session, so that a session that ends (logout,
    revocation, expiry) closes them: the broker knows nothing of sessions once a socket is
    logged in. Thread-safe: sessions end on the sweeper's thread, sockets live on the loop.
    """

    def __init__(self, is_session: Callable[[str, str], bool]) -> None:
        self._is_session = is_session  # (username, token) -> a live session of that user?
        self._open: dict[tuple[str, str], dict[int, Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def add(self, username: str, token: str, end: Callable[[], None]) -> tuple[str, str] | None:
        """Register a socket that logged in with `token`; its key, or None when the token
        is not a live session of `username` (a password login: nothing to end it)."""
        if not self._is_session(username, token):
            return None
        key = (username, session_tag_of_hash(hashlib.sha256(token.encode()).hexdigest()))
        with self._lock:
            self._open.setdefault(key, {})[id(end)] = end
        return key

    def remove(self, key: tuple[str, str], end: Callable[[], None]) -> None:
        with self._lock:
            sockets = self._open.get(key, {})
            sockets.pop(id(end), None)
            if not sockets:
                self._open.pop(key, None)

    def end(self, username: str, tag: str) -> int:
        """Close the sockets of one session; how many."""
        with self._lock:
            sockets = list(self._open.pop((username, tag), {}).values())
        for end in sockets:
            end()
        if sockets:
            logger.info("closed %d web socket(s) of an ended session of %s", len(sockets), username)
        return len(sockets)

    def sweep(self, live_tags: Callable[[str], set[str]]) -> int:
        with self._lock:
            keys = list(self._open)
        return sum(self.end(user, tag) for user, tag in keys if tag not in live_tags(user))


class StompProxy:
    """Relays one browser WebSocket to the broker's Web STOMP listener, frame for frame.

    With several brokers (a cluster), a new connection tries them in turn, starting from the
    last one that answered. With `sessions`, the first CONNECT frame's token files the socket
    under its session, which closes it when it ends.
    """

    def __init__(self, upstreams: list[str], sessions: WebSessions | None = None) -> None:
        if not upstreams:
            raise ValueError("no Web STOMP listener to proxy to")
        self.upstreams = upstreams
        self.sessions = sessions
        self._preferred = 0

    async def serve(self, websocket: WebSocket) -> None:
        if not same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            logger.info("refused a WebSocket from origin %r", websocket.headers.get("origin"))
            await websocket.close(code=CLOSE_POLICY_VIOLATION)
            return
        offered = [Subprotocol(p) for p in websocket.scope.get("subprotocols", [])]
        upstream = await self._open(offered)
        if upstream is None:
            await websocket.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        try:
            await websocket.accept(subprotocol=upstream.subprotocol)
            await _relay(websocket, upstream, self.sessions)
        finally:
            await upstream.close()

    async def _open(self, subprotocols: list[Subprotocol]) -> ClientConnection | None:
        count = len(self.upstreams)
        for step in range(count):
            index = (self._preferred + step) % count
            url = self.upstreams[index]
            try:
                upstream = await connect(
                    url,
                    subprotocols=subprotocols or None,
                    open_timeout=UPSTREAM_OPEN_TIMEOUT_SECONDS,
                    ping_interval=None,  # STOMP heart-beats keep both legs alive
                    compression=None,
                    max_size=MAX_BROKER_FRAME_BYTES,
                    proxy=None,  # straight to the broker, whatever HTTP(S)_PROXY says
                    user_agent_header=None,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                logger.warning("Web STOMP listener %s unreachable: %s", url, exc)
                continue
            self._preferred = index
            return upstream
        return None


async def _relay(
    websocket: WebSocket, upstream: ClientConnection, sessions: WebSessions | None = None
) -> None:
    """Until either side closes, or the session ends; the other is then closed too."""
    close_code = 1000
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    registered: tuple[str, str] | None = None

    def end() -> None:  # from the sweeper's thread
        loop.call_soon_threadsafe(ended.set)

    async def browser_to_broker() -> None:
        nonlocal close_code, registered
        logged_in = sessions is None
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                continue
            if len(data) > MAX_CLIENT_FRAME_BYTES:
                close_code = CLOSE_TOO_BIG
                return
            if not logged_in and sessions is not None:
                credentials = stomp_credentials(data)
                if credentials is not None:
                    logged_in = True
                    registered = await asyncio.to_thread(sessions.add, *credentials, end)
            await upstream.send(data)

    async def session_end() -> None:
        nonlocal close_code
        await ended.wait()
        close_code = CLOSE_POLICY_VIOLATION
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await websocket.send_text(SESSION_ENDED_FRAME)

    async def broker_to_browser() -> None:
        nonlocal close_code
        with contextlib.suppress(websockets.ConnectionClosed):
            async for data in upstream:
                if isinstance(data, str):
                    await websocket.send_text(data)
                else:
                    await websocket.send_bytes(data)
        close_code = upstream.close_code or 1000

    tasks = [
        asyncio.create_task(browser_to_broker()),
        asyncio.create_task(broker_to_browser()),
        asyncio.create_task(session_end()),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if registered is not None and sessions is not None:
            sessions.remove(registered, end)
        for task in tasks:
            task.cancel()
        for task in tasks:  # a side that broke (the other end went) ends the relay too
            with contextlib.suppress(
                asyncio.CancelledError, WebSocketDisconnect, websockets.ConnectionClosed,
                RuntimeError, OSError,
            ):  # fmt: skip
                await task
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await websocket.close(code=close_code if 1000 <= close_code < 5000 else 1000)


def stomp_credentials(data: str | bytes) -> tuple[str, str] | None:
    """(login, passcode) of a STOMP CONNECT (or STOMP) frame, or None for any other frame.
    STOMP 1.2: CONNECT headers are not escaped, and a repeated header's first value counts."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    head = data.lstrip("\r\n").split("\n\n", 1)[0]
    command, *lines = head.split("\n")
    if command.rstrip("\r") not in ("CONNECT", "STOMP"):
        return None
    headers: dict[str, str] = {}
    for line in lines:
        key, colon, value = line.rstrip("\r").partition(":")
        if colon:
            headers.setdefault(key, value)
    login, passcode = headers.get("login"), headers.get("passcode")
    return (login, passcode) if login and passcode else None


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser always sends Origin on a WebSocket: it must be this server. No Origin: not
    a browser (a script of a user's own), which the broker authenticates like any client."""
    if origin is None:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


def add_web_client(
    app: FastAPI,
    directory: Path | None,
    stomp_urls: list[str],
    sessions: WebSessions | None = None,
) -> None:
    """Serve the page and proxy `/ws` on `app` (the public listener)."""
    page: WebPage | None = None
    if directory is not None and (directory / "index.html").is_file():
        page = WebPage.load(directory)
        logger.info("web client from %s (%d assets)", directory, len(page.assets))
    else:
        logger.warning("no web client build in %s: `/` answers 404 (run `make web`)", directory)
    proxy = StompProxy(stomp_urls, sessions)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index(request: Request) -> Response:
        if page is None:
            return PlainTextResponse("The web client is not built here: run `make web`.", 404)
        return page.index.response(request, PAGE_CACHE)

    @app.api_route("/assets/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    def asset(name: str, request: Request) -> Response:
        found = page.assets.get(name) if page is not None else None
        if found is None:
            return PlainTextResponse("Not found", 404, headers=SECURITY_HEADERS)
        return found.response(request, ASSET_CACHE)

    @app.websocket("/ws")
    async def stomp(websocket: WebSocket) -> None:
        await proxy.serve(websocket)
