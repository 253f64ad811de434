"""The client of the server's history API: every failure one library exception, readable."""

from __future__ import annotations

import json

import httpx
import pytest

from clients.library.conversations import ConversationsClient
from clients.library.errors import (
    AuthenticationFailed,
    HistoryUnavailable,
    InvalidInput,
    NotFound,
)


def client(status: int, body: object, seen: list[httpx.Request] | None = None):
    def answer(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)

    return ConversationsClient("http://server.test", "tok", transport=httpx.MockTransport(answer))


def test_pages_carry_the_token_and_the_cursor():
    seen: list[httpx.Request] = []
    page = client(200, {"messages": [], "has_more": False}, seen).messages(
        "bob", before="01a2", limit=7
    )
    assert page.messages == [] and not page.has_more
    [request] = seen
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.url.path == "/v1/conversations/bob/messages"
    assert dict(request.url.params) == {"before": "01a2", "limit": "7"}


def test_an_older_server_keeps_no_history():
    with pytest.raises(HistoryUnavailable, match="keeps no history"):
        client(404, {"detail": "Not Found"}).sync(None)


def test_an_unknown_peer_is_not_found():
    with pytest.raises(NotFound, match="no user named 'bobb'"):
        client(404, {"detail": "there is no user named 'bobb'"}).messages("bobb")


def test_the_archive_down_is_history_unavailable():
    with pytest.raises(HistoryUnavailable, match="not available right now"):
        client(502, {"detail": "the history service is unavailable"}).conversations()


def test_a_bad_cursor_is_invalid_input_with_the_servers_reason():
    with pytest.raises(InvalidInput, match="limit must be"):
        client(422, {"detail": "limit must be a whole number from 1 to 200"}).sync("x")


def test_a_wrong_password_deletes_nothing():
    with pytest.raises(AuthenticationFailed, match="not deleted"):
        client(403, {"detail": "wrong password"}).delete_account("nope")


def test_a_sync_page_is_parsed():
    body = {
        "messages": [
            {"id": "m1", "from": "bob", "to": "alice", "text": "hi",
             "sent_at": "2026-01-01T00:00:00Z", "status": "read"}
        ],
        "receipts": [],
        "has_more": True,
    }  # fmt: skip
    page = client(200, json.loads(json.dumps(body))).sync("m0")
    assert [(m.sender, m.status) for m in page.messages] == [("bob", "read")] and page.has_more
