"""The public account API (published): sign-up, login, logout, user lookup, meta."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

from fastapi import Depends, FastAPI, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from protocol.accounts import (
    LoginRequest,
    Meta,
    Session,
    SessionInfo,
    SignupRequest,
    UserPublic,
)
from services.auth.accounts import Accounts
from services.auth.body_limit import BodySizeLimit
from services.auth.errors import (
    BrokerUnavailable,
    InvalidCredentials,
    RateLimited,
    UnknownUser,
    UsernameTaken,
)
from services.auth.validation import describe_errors

logger = logging.getLogger(__name__)

WRONG_CREDENTIALS = "wrong username or password"


class ErrorBody(BaseModel):
    """Every error answer: one readable sentence."""

    detail: str


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "The body could not be read (not UTF-8 JSON)."},
    401: {"description": "Wrong username or password, or a missing/expired/revoked token."},
    404: {"description": "No user of that name."},
    409: {"description": "The username is taken."},
    413: {"description": "The body is larger than the limit."},
    422: {"description": "A field breaks a rule; `detail` says which, in words."},
    429: {"description": "Too many failed logins; try again later.", "headers": _RETRY_AFTER},
    503: {"description": "The broker is down; nothing was created.", "headers": _RETRY_AFTER},
}


BEARER = HTTPBearer(auto_error=False, description="the session token from POST /v1/sessions")


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route: these error codes, each with an ErrorBody."""
    return {code: {"model": ErrorBody, **_ERRORS[code]} for code in codes}


def amqp_url_with_vhost(url: str, vhost: str) -> str:
    """`amqp://host:port` -> `amqp://host:port/<vhost>`, as RabbitMQ's URI spec has it.

    A plain AMQP client given the URL then lands on our vhost, not on `/`. The vhost is
    percent-encoded (`/` is `%2F`); a URL that already names a vhost is left as it is.
    """
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        return url
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def create_public_app(accounts: Accounts, meta: Meta, max_body_bytes: int = 64 * 1024) -> FastAPI:
    app = FastAPI(title="Messenger accounts", version=str(meta.protocol_version))
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)

    @app.post(
        "/v1/users",
        status_code=status.HTTP_201_CREATED,
        responses=_answers(400, 409, 413, 422, 503),
    )
    def sign_up(body: SignupRequest) -> UserPublic:
        return accounts.sign_up(body)

    @app.post("/v1/sessions", responses=_answers(400, 401, 413, 422, 429))
    def log_in(body: LoginRequest, request: Request) -> Session:
        address = request.client.host if request.client else None
        return accounts.log_in(body.username, body.password, address)

    @app.get("/v1/sessions/current", responses=_answers(401))
    def current_session(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> SessionInfo:
        token = credentials.credentials.strip() if credentials is not None else ""
        info = accounts.session_info(token) if token else None
        if info is None:
            raise InvalidCredentials()
        return info

    @app.delete(
        "/v1/sessions/current",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_answers(401),
    )
    def log_out(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> Response:
        token = credentials.credentials.strip() if credentials is not None else ""
        if not token:
            raise InvalidCredentials()
        accounts.log_out(token)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/v1/users/{username}", responses=_answers(404, 422))
    def get_user(username: str) -> UserPublic:
        return accounts.user(username)

    @app.get("/v1/meta")
    def get_meta() -> Meta:
        return meta

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own answers (404, 405), with a true `Allow`: a path served by two
        routes (GET and DELETE /v1/sessions/current) allows the methods of both."""
        headers = dict(exc.headers or {})
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            allowed = {
                method
                for route in app.router.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] != Match.NONE
                for method in route.methods or ()
            }
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        return _error(exc.status_code, str(exc.detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            detail = "request body must be JSON, sent with Content-Type: application/json"
        else:
            detail = describe_errors(exc.errors())
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)

    @app.exception_handler(UsernameTaken)
    async def taken(_: Request, exc: UsernameTaken) -> JSONResponse:
        return _error(status.HTTP_409_CONFLICT, f"username '{exc}' is taken")

    @app.exception_handler(InvalidCredentials)
    async def refused(request: Request, _: InvalidCredentials) -> JSONResponse:
        if request.url.path == "/v1/sessions/current":
            return _error(
                status.HTTP_401_UNAUTHORIZED,
                "missing, expired or revoked session token",
                {"WWW-Authenticate": "Bearer"},
            )
        return _error(status.HTTP_401_UNAUTHORIZED, WRONG_CREDENTIALS)

    @app.exception_handler(RateLimited)
    async def limited(_: Request, exc: RateLimited) -> JSONResponse:
        return _error(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed logins; try again in {exc.retry_after} s",
            {"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(UnknownUser)
    async def unknown(_: Request, __: UnknownUser) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, "no such user")

    @app.exception_handler(BrokerUnavailable)
    async def unavailable(_: Request, __: BrokerUnavailable) -> JSONResponse:
        return _error(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the message broker is unavailable; try again later",
            {"Retry-After": "5"},
        )


def _error(code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code, headers=headers)
