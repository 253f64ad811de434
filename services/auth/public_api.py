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
    SignupRequest,
    UserPublic,
)
from protocol.conversations import (
    AccountSettings,
    ConversationSummary,
    CurrentSession,
    DeleteAccountRequest,
    DeviceQueue,
    MessagePage,
    SessionCreated,
    SyncPage,
)
from services.auth.accounts import Accounts
from services.auth.archive_gateway import ArchiveGateway, with_display_names
from services.auth.body_limit import BodySizeLimit
from services.auth.errors import (
    AccountDeleted,
    ArchiveUnavailable,
    BrokerUnavailable,
    InvalidCredentials,
    NameHeld,
    RateLimited,
    UnknownUser,
    UsernameTaken,
    WrongPassword,
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
    403: {"description": "The password does not match the account."},
    404: {"description": "No user of that name."},
    409: {"description": "The username is taken (or held after an account's deletion)."},
    410: {"description": "The account of that name was deleted."},
    413: {"description": "The body is larger than the limit."},
    422: {"description": "A field breaks a rule; `detail` says which, in words."},
    429: {"description": "Too many failed logins; try again later.", "headers": _RETRY_AFTER},
    502: {"description": "The archive (history) service did not answer."},
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


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise InvalidCredentials()
    return token


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def create_public_app(
    accounts: Accounts,
    meta: Meta,
    max_body_bytes: int = 64 * 1024,
    archive: ArchiveGateway | None = None,
) -> FastAPI:
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

    @app.post("/v1/sessions", responses=_answers(400, 401, 413, 422, 429, 503))
    def log_in(body: LoginRequest, request: Request) -> SessionCreated:
        address = request.client.host if request.client else None
        return accounts.log_in(body.username, body.password, address)

    @app.get("/v1/sessions/current", responses=_answers(401))
    def current_session(credentials: Credentials) -> CurrentSession:
        return accounts.current_session(_token(credentials))

    @app.put("/v1/sessions/current/queue", responses=_answers(401, 503))
    def redeclare_queue(credentials: Credentials) -> DeviceQueue:
        return DeviceQueue(device_queue=accounts.redeclare_device(_token(credentials)))

    @app.delete(
        "/v1/sessions/current",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_answers(401, 503),
    )
    def log_out(credentials: Credentials) -> Response:
        accounts.log_out(_token(credentials))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/v1/me/settings", responses=_answers(401))
    def get_settings(credentials: Credentials) -> AccountSettings:
        return accounts.settings(_token(credentials))

    @app.patch("/v1/me/settings", responses=_answers(400, 401, 413, 422))
    def patch_settings(body: AccountSettings, credentials: Credentials) -> AccountSettings:
        return accounts.change_settings(_token(credentials), body)

    @app.delete(
        "/v1/me",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=_answers(400, 401, 403, 413, 422, 502, 503),
    )
    def delete_me(body: DeleteAccountRequest, credentials: Credentials) -> Response:
        accounts.delete_account(_token(credentials), body.password)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/v1/users/{username}", responses=_answers(404, 410, 422))
    def get_user(username: str) -> UserPublic:
        return accounts.user(username)

    _add_history(app, accounts, archive)

    @app.get("/v1/meta")
    def get_meta() -> Meta:
        return meta

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _add_history(app: FastAPI, accounts: Accounts, archive: ArchiveGateway | None) -> None:
    """The archive's history API, for the token's user only (see archive_gateway.py)."""

    def ask(path: str, token: str, params: dict[str, str | None]) -> tuple[str, Any]:
        if archive is None or not archive.enabled:
            raise ArchiveUnavailable("no archive is configured")
        username = accounts.session_user(token)
        if username is None:
            raise InvalidCredentials()
        sent = {key: value for key, value in params.items() if value is not None}
        response = archive.get(path, username, sent)
        if response.status_code != 200:
            return username, JSONResponse(
                _archive_error(response), status_code=_archive_status(response.status_code)
            )
        return username, response.json()

    @app.get("/v1/conversations", responses=_answers(401, 502))
    def conversations(credentials: Credentials) -> Any:
        _, answer = ask("/v1/conversations", _token(credentials), {})
        if isinstance(answer, JSONResponse):
            return answer
        summaries = [ConversationSummary.model_validate(item) for item in answer]
        names = {s.peer: accounts.display_name(s.peer) for s in summaries}
        listed = with_display_names(summaries, names)
        return JSONResponse([s.model_dump(mode="json", by_alias=True) for s in listed])

    @app.get(
        "/v1/conversations/{peer}/messages",
        response_model=MessagePage,
        responses=_answers(401, 404, 422, 502),
    )
    def messages(
        peer: str,
        credentials: Credentials,
        before: str | None = None,
        after: str | None = None,
        limit: str | None = None,
    ) -> Any:
        token = _token(credentials)
        if accounts.session_user(token) is None:
            raise InvalidCredentials()
        if not accounts.known_name(peer):  # a user, or a deleted one whose history stays
            raise UnknownUser(peer)
        params = {"before": before, "after": after, "limit": limit}
        _, answer = ask(f"/v1/conversations/{peer}/messages", token, params)
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer)

    @app.get("/v1/sync", response_model=SyncPage, responses=_answers(401, 422, 502))
    def sync(credentials: Credentials, after: str | None = None, limit: str | None = None) -> Any:
        _, answer = ask("/v1/sync", _token(credentials), {"after": after, "limit": limit})
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer)


def _archive_error(response: Any) -> dict[str, str]:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return {"detail": detail if isinstance(detail, str) else "the archive refused the request"}


def _archive_status(code: int) -> int:
    """4xx pass through (the archive judged the request); anything else is a bad gateway."""
    return code if 400 <= code < 500 else status.HTTP_502_BAD_GATEWAY


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
        if isinstance(exc, NameHeld):
            return _error(
                status.HTTP_409_CONFLICT,
                f"username '{exc}' belonged to a deleted account and cannot be taken yet",
            )
        return _error(status.HTTP_409_CONFLICT, f"username '{exc}' is taken")

    @app.exception_handler(WrongPassword)
    async def wrong_password(_: Request, __: WrongPassword) -> JSONResponse:
        return _error(status.HTTP_403_FORBIDDEN, "wrong password")

    @app.exception_handler(ArchiveUnavailable)
    async def archive_down(_: Request, __: ArchiveUnavailable) -> JSONResponse:
        return _error(
            status.HTTP_502_BAD_GATEWAY,
            "the history service is unavailable; try again later",
            {"Retry-After": "5"},
        )

    @app.exception_handler(InvalidCredentials)
    async def refused(request: Request, _: InvalidCredentials) -> JSONResponse:
        if request.url.path != "/v1/sessions":
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
    async def unknown(_: Request, exc: UnknownUser) -> JSONResponse:
        if isinstance(exc, AccountDeleted):
            return _error(status.HTTP_410_GONE, "deleted")
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
