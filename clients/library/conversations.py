"""The server side of conversations, as a small synchronous client of the public origin.

The archive keeps every conversation; the auth service serves its API on the same origin as
the account API (one `MESSENGER_URL`), authenticated by the session token. This client also
holds the per-account calls that came with it: settings, the device queue, account deletion.
Failures end as the library's exceptions (clients/library/errors.py), like AccountsClient's.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from clients.library.accounts import AccountsClient
from clients.library.errors import (
    AuthenticationFailed,
    HistoryUnavailable,
    InvalidInput,
    NotFound,
    ServerError,
)
from protocol.conversations import PAGE_LIMIT_MAX as PAGE_LIMIT
from protocol.conversations import (
    AccountSettings,
    ConversationSummary,
    DeviceInfo,
    MessagePage,
    SyncPage,
)

M = TypeVar("M", MessagePage, SyncPage, AccountSettings)
_SUMMARIES = TypeAdapter(list[ConversationSummary])


class ConversationsClient(AccountsClient):
    """`AccountsClient` plus the calls that need a session token."""

    def __init__(self, base_url: str, token: str, **options: Any) -> None:
        super().__init__(base_url, **options)
        self.token = token

    def __enter__(self) -> ConversationsClient:
        return self

    # -- history ---------------------------------------------------------------------------

    def conversations(self) -> list[ConversationSummary]:
        """Every conversation of this user, newest first."""
        response = self._history_request("GET", "/v1/conversations")
        try:
            return _SUMMARIES.validate_json(response.content)
        except ValidationError as exc:
            raise self._not_understood() from exc

    def messages(
        self,
        peer: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> MessagePage:
        """One page of the conversation with `peer`, oldest to newest (the newest page when no
        cursor is given). NotFound when `peer` is no user."""
        params: dict[str, str | int] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if after is not None:
            params["after"] = after
        response = self._history_request(
            "GET", f"/v1/conversations/{peer}/messages", params=params, peer=peer
        )
        return self._model(response, MessagePage)

    def sync(self, after: str | None, limit: int = PAGE_LIMIT) -> SyncPage:
        """Everything of this user after the message id `after` (all of it when None)."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._model(self._history_request("GET", "/v1/sync", params=params), SyncPage)

    # -- the account -----------------------------------------------------------------------

    def settings(self) -> AccountSettings:
        return self._model(self._history_request("GET", "/v1/me/settings"), AccountSettings)

    def change_settings(self, settings: AccountSettings) -> AccountSettings:
        response = self._history_request(
            "PATCH", "/v1/me/settings", json=settings.model_dump(mode="json")
        )
        return self._model(response, AccountSettings)

    def redeclare_device_queue(self) -> str:
        """Ask the server to declare this device's queue again (it expired); its name."""
        response = self._history_request("PUT", "/v1/sessions/current/queue")
        try:
            return str(response.json()["device_queue"])
        except (ValueError, KeyError, TypeError) as exc:
            raise self._not_understood() from exc

    def device(self) -> DeviceInfo | None:
        """This session's device (`GET /v1/sessions/current`), None from an older server."""
        response = self._request("GET", "/v1/sessions/current", token=self.token)
        self._raise_for_status(response)
        try:
            return DeviceInfo.model_validate_json(response.content)
        except ValidationError:
            return None

    def delete_account(self, password: str) -> None:
        """`DELETE /v1/me`: AuthenticationFailed for a wrong password, nothing changed."""
        response = self._request("DELETE", "/v1/me", token=self.token, json={"password": password})
        if response.status_code == 403:
            raise AuthenticationFailed(
                "wrong password; the account was not deleted", hint="try again"
            )
        self._raise_for_status(response)

    # -- plumbing --------------------------------------------------------------------------

    def _history_request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: Any = None,
        peer: str | None = None,
    ) -> httpx.Response:
        url = path
        if params:
            url = f"{path}?{httpx.QueryParams(params)}"
        response = self._request(method, url, token=self.token, json=json)
        status = response.status_code
        if status == 404:
            if _is_unknown_route(response):
                raise HistoryUnavailable(
                    f"the server at {self.base_url} keeps no history",
                    hint="it is older than this client; the local history is all there is",
                )
            if peer is not None:
                raise NotFound(f"there is no user named '{peer}'", hint="check the spelling")
        if status in (502, 503, 504):
            raise HistoryUnavailable(
                f"the history service behind {self.base_url} is not available right now",
                hint="try again in a moment; the local history is shown meanwhile",
            )
        if status == 422:
            raise InvalidInput(f"the server refused the request: {_text(response)}")
        self._raise_for_status(response)
        return response

    def _model(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise self._not_understood() from exc

    def _not_understood(self) -> ServerError:
        return ServerError(
            f"the server at {self.base_url} sent an answer this client does not understand",
            hint="is --server pointing at a Messenger server of a compatible version?",
        )


def _is_unknown_route(response: httpx.Response) -> bool:
    """FastAPI's answer for a path it has no route for (an older server)."""
    try:
        return bool(response.json() == {"detail": "Not Found"})
    except ValueError:
        return True


def _text(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"
    return str(detail)[:300] if detail else f"HTTP {response.status_code}"
