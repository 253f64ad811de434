"""The history API (internal): only the auth service asks it, naming the user.

The auth service authenticates the client's token and forwards `/v1/conversations*` and
`/v1/sync` here with `X-Messenger-User` and the shared key `X-Messenger-Archive-Key`; a
request without the right key gets 401 whatever it claims. The listener binds an internal
address (127.0.0.1 by default); clients never reach it directly.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from protocol.accounts import is_valid_username
from protocol.conversations import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX
from services.archive.store import CursorError, Store

logger = logging.getLogger(__name__)

USER_HEADER = "X-Messenger-User"
KEY_HEADER = "X-Messenger-Archive-Key"


UserHeader = Annotated[str | None, Header(alias=USER_HEADER)]
KeyHeader = Annotated[str | None, Header(alias=KEY_HEADER)]


class BadRequest(Exception):
    """A parameter a client sent is malformed: 422 with this sentence."""


def parse_limit(value: str | None) -> int:
    if value is None:
        return PAGE_LIMIT_DEFAULT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= PAGE_LIMIT_MAX:
        raise BadRequest(f"limit must be a whole number from 1 to {PAGE_LIMIT_MAX}")
    return int(value)


def create_archive_app(store: Store, key: str) -> FastAPI:
    app = FastAPI(title="Messenger archive (internal)", docs_url=None, redoc_url=None)

    def caller(user: str | None, given_key: str | None) -> str:
        if given_key is None or not hmac.compare_digest(given_key.encode(), key.encode()):
            raise PermissionError("wrong or missing archive key")
        if user is None or not is_valid_username(user):
            raise PermissionError("no user")
        return user

    @app.get("/v1/conversations")
    async def list_conversations(user: UserHeader = None, given: KeyHeader = None) -> Any:
        who = caller(user, given)
        listed = await run_in_threadpool(store.conversations, who)
        return [s.model_dump(mode="json", by_alias=True) for s in listed]

    @app.get("/v1/conversations/{peer}/messages")
    async def conversation_page(
        peer: str,
        before: str | None = None,
        after: str | None = None,
        limit: str | None = None,
        user: UserHeader = None,
        given: KeyHeader = None,
    ) -> Any:
        who = caller(user, given)
        if not is_valid_username(peer):
            return JSONResponse({"detail": "no such user"}, status_code=404)
        count = parse_limit(limit)
        page = await run_in_threadpool(
            lambda: store.page(who, peer, before=before, after=after, limit=count)
        )
        return page.model_dump(mode="json", by_alias=True)

    @app.get("/v1/sync")
    async def sync(
        after: str | None = None,
        limit: str | None = None,
        user: UserHeader = None,
        given: KeyHeader = None,
    ) -> Any:
        who = caller(user, given)
        count = parse_limit(limit)
        page = await run_in_threadpool(lambda: store.sync(who, after=after, limit=count))
        return page.model_dump(mode="json", by_alias=True)

    @app.delete("/internal/users/{username}", status_code=status.HTTP_204_NO_CONTENT)
    async def forget(username: str, user: UserHeader = None, given: KeyHeader = None) -> Response:
        who = caller(user, given)
        if who != username:
            raise PermissionError("a user's archive is deleted only on its own behalf")
        await run_in_threadpool(store.forget_user, username)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(PermissionError)
    async def refused(_: Request, exc: PermissionError) -> JSONResponse:
        logger.warning("refused a history request: %s", exc)
        return JSONResponse({"detail": "not authorised"}, status_code=401)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(CursorError)
    async def bad_cursor(_: Request, exc: CursorError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    return app
