"""The public account API of the auth service, as a small synchronous client.

Every way a request can fail ends as one exception from `clients.library.errors`, with a
message that can be shown to a person as it is: no httpx exception and no traceback leaks.
"""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

import httpx
from pydantic import ValidationError

from clients.library.errors import (
    AccountDeleted,
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    ServerError,
    ServerUnreachable,
)
from protocol.accounts import Meta, Session, SessionInfo, UserPublic
from protocol.conversations import DeviceInfo

M = TypeVar("M", Session, SessionInfo, UserPublic, Meta)

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "messenger-cli/1"


class AccountsClient:
    """`POST /v1/users`, `POST /v1/sessions`, `GET|DELETE /v1/sessions/current`,
    `GET /v1/users/{u}`, `GET /v1/meta`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    def __enter__(self) -> AccountsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API ---------------------------------------------------------------------------

    def signup(self, username: str, display_name: str, password: str) -> UserPublic:
        body = {"username": username, "display_name": display_name, "password": password}
        response = self._request("POST", "/v1/users", json=body)
        if response.status_code == 409 and "deleted" in (_detail(response) or ""):
            raise Conflict(
                f"the username '{username}' belonged to an account deleted recently and"
                " cannot be taken yet",
                hint="pick another one",
            )
        if response.status_code == 409:
            raise Conflict(
                f"the username '{username}' is taken",
                hint="pick another one, or log in with `messenger login " + username + "`",
            )
        self._raise_for_status(response)
        if response.content:
            try:
                return UserPublic.model_validate_json(response.content)
            except ValidationError:
                pass
        return UserPublic(username=username, display_name=display_name)

    def login(self, username: str, password: str) -> Session:
        return self.login_device(username, password)[0]

    def login_device(self, username: str, password: str) -> tuple[Session, DeviceInfo | None]:
        """Open a session; the device it created (None from a server without devices)."""
        response = self._request(
            "POST", "/v1/sessions", json={"username": username, "password": password}
        )
        if response.status_code == 401:
            raise AuthenticationFailed(
                "wrong username or password", hint="check both, they are case-sensitive"
            )
        self._raise_for_status(response)
        session = self._parse(response, Session)
        try:
            device: DeviceInfo | None = DeviceInfo.model_validate_json(response.content)
        except ValidationError:
            device = None
        return session, device

    def logout(self, token: str) -> None:
        """Revoke `token`. A token the server no longer knows counts as revoked already."""
        response = self._request("DELETE", "/v1/sessions/current", token=token)
        if response.status_code == 401:
            return
        self._raise_for_status(response)

    def current_session(self, token: str) -> SessionInfo:
        """Whose session `token` is; AuthenticationFailed (401) once it expired or was
        revoked."""
        response = self._request("GET", "/v1/sessions/current", token=token)
        self._raise_for_status(response)
        return self._parse(response, SessionInfo)

    def user(self, username: str, token: str | None = None) -> UserPublic:
        response = self._request("GET", f"/v1/users/{username}", token=token)
        if response.status_code == 404:
            raise NotFound(f"there is no user named '{username}'", hint="check the spelling")
        if response.status_code == 410:
            raise AccountDeleted(f"'{username}' deleted their account")
        self._raise_for_status(response)
        return self._parse(response, UserPublic)

    def meta(self) -> Meta:
        response = self._request("GET", "/v1/meta")
        self._raise_for_status(response)
        return self._parse(response, Meta)

    # -- plumbing --------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, token: str | None = None, json: Any = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            return self._http.request(method, path, json=json, headers=headers)
        except httpx.TimeoutException as exc:
            raise ServerUnreachable(
                f"the server at {self.base_url} did not answer in time",
                hint="is it overloaded or behind a firewall? try again, or pass --server URL",
            ) from exc
        except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ServerUnreachable(
                f"cannot reach the server at {self.base_url}",
                hint="is it running (`make run`)? pass --server URL or set MESSENGER_URL",
            ) from exc

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = _detail(response)
        if status == 401:
            raise AuthenticationFailed(
                "your session has expired or was revoked",
                hint="log in again with `messenger login USERNAME`",
            )
        if status == 429:
            raise RateLimited("too many failed attempts", retry_after=_retry_after(response))
        if status == 404:
            raise NotFound(detail or "not found")
        if status == 409:
            raise Conflict(detail or "conflict")
        if status in (400, 422):
            raise InvalidInput(detail or "the server refused the request as invalid")
        if status == 503:
            raise ServerError(
                f"the server at {self.base_url} is temporarily unavailable"
                + (f": {detail}" if detail else ""),
                hint="its message broker may be down; try again in a moment",
            )
        _unexpected(self.base_url, status, detail)

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServerError(
                f"the server at {self.base_url} sent an answer this client does not understand",
                hint="is --server pointing at a Messenger server of a compatible version?",
            ) from exc


def _unexpected(base_url: str, status: int, detail: str | None) -> NoReturn:
    raise ServerError(
        f"the server at {base_url} answered HTTP {status}" + (f": {detail}" if detail else ""),
        hint="try again; if it persists, tell whoever runs the server",
    )


def _detail(response: httpx.Response) -> str | None:
    """The server's readable reason: `{"detail": "..."}`, or FastAPI's list of errors."""
    try:
        body = response.json()
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail[:300]
    if isinstance(detail, list):
        messages = [str(item.get("msg", "")) for item in detail if isinstance(item, dict)]
        joined = "; ".join(message for message in messages if message)
        return joined[:300] or None
    return None


def _retry_after(response: httpx.Response) -> int:
    try:
        return max(1, int(response.headers.get("Retry-After", "60")))
    except ValueError:
        return 60
