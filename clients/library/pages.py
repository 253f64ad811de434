"""Filling the local history of one conversation from the server's pages.

The local copy of a conversation is kept contiguous: from its oldest stored message up to
the newest this device took in, nothing is missing (live delivery and syncs bring the new
end; the pages here extend it at either end, never leaving a hole). So what the local copy
lacks is always older than its oldest message (paged back with `before`) or newer than its
newest (paged forward with `after`), and a conversation paged back to its first message is
marked filled, after which `history` needs no server at all for old pages. A cursor the
archive does not know (422: a message from before the archive, or one it has not taken in
yet) ends a backward fill (nothing older is there) and turns a forward one into fetching
the newest page.

Pages are stored as already shown: they are history, not news; `inbox` does not show them
again when the device queue brings the same message.
"""

from __future__ import annotations

from clients.library.conversations import ConversationsClient
from clients.library.errors import InvalidInput
from clients.library.history import History
from protocol.conversations import PAGE_LIMIT_MAX

# A forward fill (what arrived since this device last looked) stops after this many pages
# (40,000 messages): past that, the device queue and the next sync bring the rest.
MAX_FORWARD_PAGES = 200


def fill_recent(api: ConversationsClient, history: History, peer: str, limit: int) -> None:
    """What a chat or `history` opens with: the local copy of the conversation with `peer`
    brought up to the server's newest message (paged forward from the local newest), or,
    when there is no local copy, the server's newest `limit` messages."""
    newest = history.newest_id_with(peer)
    if newest is not None:
        try:
            for _ in range(MAX_FORWARD_PAGES):
                page = api.messages(peer, after=newest, limit=PAGE_LIMIT_MAX)
                history.store_received_many(page.messages, shown=True)
                if not page.messages or not page.has_more:
                    return
                newest = page.messages[-1].id
            return
        except InvalidInput:
            pass  # the archive does not know our newest message: its newest page, then
    page = api.messages(peer, limit=min(max(limit, 1), PAGE_LIMIT_MAX))
    history.store_received_many(page.messages, shown=True)
    if newest is None and not page.has_more:
        history.mark_filled(peer)


def fill_back(api: ConversationsClient, history: History, peer: str, want: int | None) -> int:
    """Page back until the local copy holds `want` messages with `peer` (None: all of
    them) or the server has no older ones. Returns how many pages were fetched."""
    pages = 0
    while not history.filled(peer):
        have = history.count(peer)
        if want is not None and have >= want:
            break
        oldest = history.oldest_id(peer)
        try:
            page = api.messages(peer, before=oldest, limit=PAGE_LIMIT_MAX)
        except InvalidInput:
            # The archive does not know our oldest message: it is from before the archive
            # began, so the archive holds nothing older either.
            history.mark_filled(peer)
            break
        pages += 1
        history.store_received_many(page.messages, shown=True)
        if not page.has_more or not page.messages:
            history.mark_filled(peer)
    return pages
