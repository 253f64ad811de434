"""Read receipts: what was put in front of the person is read, said once per conversation.

A `read` receipt means "read up to this message" (the archive keeps read state as one id per
conversation, and the sender's client marks the earlier ones read too), so what one batch
showed costs one receipt per person it came from, naming the newest message. The receipt
always goes out: the reader's other devices and the archive need it to keep unread counts
right. Whether the original sender is told (`notify_sender`) is the account setting
`read_receipts`, fetched from the server and cached here for SETTINGS_TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from clients.library.errors import MessengerError
from clients.library.history import History, StoredMessage
from protocol.conversations import AccountSettings

logger = logging.getLogger(__name__)

SETTINGS_TTL = timedelta(minutes=1)
_SETTING_KEY = "settings.read_receipts"
_FETCHED_KEY = "settings.fetched_at"

# (message id, to, notify_sender)
SendRead = Callable[[str, str, bool], None]


def newest_per_sender(owner: str, shown: Sequence[StoredMessage]) -> dict[str, str]:
    """For the received messages among `shown` (not notes, not the owner's own), the newest
    id per sender: what one batch's read receipts name."""
    newest: dict[str, str] = {}
    for message in shown:
        if message.sender == owner or message.recipient != owner:
            continue
        if message.id > newest.get(message.sender, ""):
            newest[message.sender] = message.id
    return newest


class ReadReceipts:
    """Marks shown messages read here and tells the server, one receipt per sender."""

    def __init__(self, history: History, send: SendRead, notify_sender: Callable[[], bool]) -> None:
        self._history = history
        self._send = send
        self._notify_sender = notify_sender

    def shown(self, messages: Sequence[StoredMessage]) -> int:
        """These were put in front of the person; returns how many receipts went out."""
        unread = [m for m in messages if not m.read]
        newest = newest_per_sender(self._history.owner, unread)
        if not newest:
            return 0
        self._history.mark_read([m.id for m in unread if m.recipient == self._history.owner])
        notify = self._notify_sender()
        for sender, message_id in newest.items():
            self._send(message_id, sender, notify)
        return len(newest)


class SettingsCache:
    """The account's settings, from the server at most every SETTINGS_TTL, else from the
    local cache; the default (read receipts on) when neither knows."""

    def __init__(
        self,
        history: History,
        fetch: Callable[[], AccountSettings],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._history = history
        self._fetch = fetch
        self._clock = clock

    def read_receipts(self) -> bool:
        cached = self._history.state(_SETTING_KEY)
        fetched = self._history.state(_FETCHED_KEY)
        age = None if fetched is None else self._clock() - datetime.fromisoformat(fetched)
        fresh = age is not None and age < SETTINGS_TTL
        if cached is not None and fresh:
            return cached == "1"
        try:
            settings = self._fetch()
        except MessengerError as exc:
            logger.info("could not fetch the settings (%s); using the cached ones", exc)
            return cached != "0"
        self.remember(settings)
        return settings.read_receipts

    def remember(self, settings: AccountSettings) -> None:
        self._history.set_state(_SETTING_KEY, "1" if settings.read_receipts else "0")
        self._history.set_state(_FETCHED_KEY, self._clock().isoformat())
