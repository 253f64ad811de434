"""The history API on the public origin: `/v1/conversations*` and `/v1/sync`, proxied to the
archive service.

Clients keep one address (`MESSENGER_URL`). This service authenticates the session token,
then asks the archive on its internal listener, naming the user in `X-Messenger-User` and
proving who asks with the shared key in `X-Messenger-Archive-Key`; the archive trusts
nothing else. Bodies are small (a page is at most 200 messages), so the answer is read
whole and passed on, status and body, without streaming.
"""

from __future__ import annotations

import logging

import httpx

from protocol.conversations import ConversationSummary
from services.auth.errors import ArchiveUnavailable

logger = logging.getLogger(__name__)

USER_HEADER = "X-Messenger-User"
KEY_HEADER = "X-Messenger-Archive-Key"


class ArchiveGateway:
    def __init__(self, base_url: str, key: str | None, timeout: float = 10) -> None:
        self._key = key
        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, trust_env=False)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def get(self, path: str, username: str, params: dict[str, str]) -> httpx.Response:
        """GET `path` on the archive as `username`; ArchiveUnavailable when it does not answer."""
        return self._request("GET", path, username, params)

    def forget_user(self, username: str) -> None:
        """Remove a deleted user's own data from the archive (read state, notes to self)."""
        if not self.enabled:
            return
        response = self._request("DELETE", "/internal/users/" + username, username, {})
        if response.status_code >= 300:
            logger.error("the archive refused to forget %s: %s", username, response.status_code)
            raise ArchiveUnavailable("the archive refused to delete the user's data")

    def close(self) -> None:
        self._client.close()

    def _request(
        self, method: str, path: str, username: str, params: dict[str, str]
    ) -> httpx.Response:
        if self._key is None:
            raise ArchiveUnavailable("no archive is configured")
        headers = {USER_HEADER: username, KEY_HEADER: self._key}
        try:
            return self._client.request(method, path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("the archive did not answer %s %s: %r", method, path, exc)
            raise ArchiveUnavailable("the archive did not answer") from exc


def with_display_names(
    summaries: list[ConversationSummary], display_name: dict[str, str | None]
) -> list[ConversationSummary]:
    """The archive knows no display names; the user store does (None: a deleted user)."""
    return [
        summary.model_copy(update={"display_name": display_name.get(summary.peer)})
        for summary in summaries
    ]
