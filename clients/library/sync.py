"""Catching up from the archive: what this device missed, after the newest id it has.

A device queue keeps what arrives while the device is away, but only so much (drop-head)
and only for so long (it expires): on every (re)connect the client asks the archive for
everything after its cursor (`GET /v1/sync?after=`), stores it (dedupe by id), then consumes
the queue live. The cursor is the newest id this device took in from the queue or from a
sync page, kept in the local history; it is not the newest id of the history as a whole,
because history pages and a chat's first screen bring in newer messages of one
conversation only, and a cursor moved past the others would skip what they missed.

A device with no cursor yet (a new one, or one that ran before there was an archive) starts
from where the server stands: the newest last message of its conversations (older messages
are history, paged on demand). Such a device
first takes in, as news, the messages its conversations count as unread: what came before
this device and nobody read on another one, including all that was sent to the user before
their first login (no queue held it; the archive did).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from clients.library.conversations import ConversationsClient
from clients.library.errors import InvalidInput
from clients.library.history import History
from protocol.conversations import PAGE_LIMIT_MAX, SyncPage

logger = logging.getLogger(__name__)

CURSOR_KEY = "sync_cursor"
# A new device fetches the unread messages of a conversation in one page with this many
# more (the owner's own messages may sit between them).
UNREAD_SLACK = 50
# A sync that pages this often is stopped (200 a page: 100,000 messages); the next connect
# goes on from where it stopped.
MAX_PAGES = 500


def newest(ids: Sequence[str]) -> str | None:
    """The greatest id (server ids sort by time as text)."""
    return max(ids) if ids else None


class Syncer:
    def __init__(self, api: ConversationsClient, history: History) -> None:
        self._api = api
        self._history = history

    def cursor(self, on_page: Callable[[SyncPage], object] | None = None) -> str | None:
        """Where the next sync starts, set on first use (see the module's docstring)."""
        cursor = self._history.state(CURSOR_KEY)
        if cursor is not None:
            return cursor
        # Not the local history's newest id: what this device sent before it first synced
        # is there too, and a cursor after it would skip what came to it meanwhile.
        return self._start_from_server(on_page)

    def _start_from_server(self, on_page: Callable[[SyncPage], object] | None) -> str | None:
        """Start at the newest last message of the conversations; first hand `on_page` the
        unread messages of each (what came before this device, or before the user's first
        login, and nobody has read: news), as pages of their own."""
        summaries = self._api.conversations()
        # The last messages are not stored here: the newest may still be on its way
        # through the device queue (it exists since login), to be shown when it comes.
        cursor = newest([s.last_message.id for s in summaries if s.last_message])
        for summary in summaries:
            last = summary.last_message
            if summary.unread > 0 and summary.peer != self._history.owner and on_page and last:
                on_page(self._unread(summary.peer, summary.unread, last.id))
        if cursor is not None:
            self._history.set_state(CURSOR_KEY, cursor)
        return cursor

    def _unread(self, peer: str, unread: int, last_id: str) -> SyncPage:
        """The newest `unread` messages from `peer` up to `last_id` (the count is of the
        list's moment: what came since comes with the sync after it, in order)."""
        page = self._api.messages(peer, limit=min(unread + UNREAD_SLACK, PAGE_LIMIT_MAX))
        received = [m for m in page.messages if m.sender == peer and m.id <= last_id]
        return SyncPage(messages=received[-unread:], receipts=[], has_more=False)

    def run(self, on_page: Callable[[SyncPage], object]) -> int:
        """Fetch every page after the cursor; `on_page` stores it, then the cursor moves.
        Returns how many messages came."""
        after = self.cursor(on_page)
        count = 0
        for _ in range(MAX_PAGES):
            try:
                page = self._api.sync(after, limit=PAGE_LIMIT_MAX)
            except InvalidInput:
                if after is None:
                    raise
                # The archive does not know the cursor (a message from before the archive,
                # or one it has not taken in yet): start again from where the server stands.
                logger.info("the server does not know the sync cursor %s; starting afresh", after)
                after = self._start_from_server(on_page)
                continue
            on_page(page)
            count += len(page.messages)
            last = newest([m.id for m in page.messages])
            if last is not None:
                self._history.advance_state(CURSOR_KEY, last)
                after = max(after, last) if after else last
            if not page.has_more or last is None:
                break
        else:
            logger.warning("stopped syncing after %d pages; the next connect goes on", MAX_PAGES)
        return count


def advance_cursor(history: History, ids: Sequence[str]) -> None:
    """Live messages stored: the cursor moves past them (no server involved)."""
    last = newest(ids)
    if last is not None:
        history.advance_state(CURSOR_KEY, last)
