"""Everything that reaches this device, each message once, across reconnects.

Each login is a device with a queue of its own (`device.<user>.<device id>`), bound to the
user's routing key, so the broker gives every device of a user every message. What one run
of `inbox`/`listen`/`chat` takes in, in this order:

1. a legacy `inbox.<user>` (a deployment from before devices), drained once if it is there;
2. the archive, after this device's cursor (clients/library/sync.py), on every (re)connect:
   what the device queue dropped (it is bounded) or never held (it expired) comes from there;
3. the device queue, live. If it is gone (it expired while the device was away), the
   server declares it again (`PUT /v1/sessions/current/queue`) and step 2 fills the gap.

Everything goes through the same callbacks, keyed by message id, so whatever two of these
paths both bring is stored and shown once. A session from a server without devices (no
device queue in the session file) consumes `inbox.<user>` as before, with no sync.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import pika.exceptions

from broker.errors import Failure, classify
from clients.library.connection import RECONNECT_WINDOW_SECONDS, Connection
from clients.library.consumer import InboxConsumer
from clients.library.conversations import ConversationsClient
from clients.library.errors import HistoryUnavailable, MessengerError, QueueMissing
from clients.library.history import History
from clients.library.sync import Syncer, advance_cursor
from protocol.conversations import SyncPage
from protocol.messages import DeliveredMessage, ReceiptNotice
from protocol.topology import inbox_queue

logger = logging.getLogger(__name__)

# `inbox` waits this long for the legacy inbox to bring more before it counts as drained.
LEGACY_IDLE_SECONDS = 0.2
# A legacy message this much younger than the device queue may be missing from it (clocks).
LEGACY_MARGIN = timedelta(seconds=60)
_LEGACY_GONE_KEY = "legacy_inbox_gone"


def queue_exists(connection: Connection, queue: str) -> int | None:
    """The number of messages ready in `queue`, None when it does not exist (a passive
    declare: it changes nothing, and needs no permission)."""
    channel = connection.channel()
    try:
        frame = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if classify(exc) is Failure.MISSING:
            return None
        raise
    with contextlib.suppress(pika.exceptions.AMQPError):
        channel.close()
    return int(frame.method.message_count)


class DeviceFeed:
    """Drives an InboxConsumer on this device's queue, with the legacy drain and syncs.

    `on_queue(name)` is told when the server declared the device queue again (the session
    file keeps the name); `on_sync_failed(error)` when a sync could not run (the archive is
    down: the device queue alone is consumed, and the next connect syncs again).
    """

    def __init__(
        self,
        inbox: InboxConsumer,
        connection: Connection,
        history: History,
        api: ConversationsClient | None,
        device_queue: str | None,
        *,
        on_queue: Callable[[str], object] | None = None,
        on_sync_failed: Callable[[MessengerError], None] | None = None,
        device_since: datetime | None = None,
    ) -> None:
        self.inbox = inbox
        self._connection = connection
        self._history = history
        self._api = api
        self._device_queue = device_queue
        self._on_queue = on_queue
        self._on_sync_failed = on_sync_failed
        self._device_since = device_since
        self._history_available = api is not None and device_queue is not None
        inbox.queue = device_queue or inbox_queue(connection.username)

    def stop(self) -> None:
        self.inbox.stop()

    def run(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt: Callable[[ReceiptNotice], None] | None,
        on_synced: Callable[[SyncPage], None],
        *,
        idle_timeout: float | None = None,
        give_up_after: float = RECONNECT_WINDOW_SECONDS,
        on_lost: Callable[[MessengerError], None] | None = None,
        on_back: Callable[[], None] | None = None,
    ) -> int:
        """Legacy drain, sync, then the device queue until stopped or idle (InboxConsumer.run
        says how); syncs again after every reconnect. Returns what the queues handed over."""

        def live(messages: list[DeliveredMessage]) -> None:
            on_messages(messages)
            if self._device_queue is not None:
                advance_cursor(self._history, [m.id for m in messages])

        def back() -> None:
            if on_back is not None:
                on_back()
            self.sync(on_synced)

        handled = 0
        if self._device_queue is not None:
            with self._connection.translated_errors():
                handled += self._drain_legacy(live, on_receipt)
        self.sync(on_synced)
        while True:
            try:
                return handled + self.inbox.run(
                    live,
                    on_receipt,
                    idle_timeout=idle_timeout,
                    give_up_after=give_up_after,
                    on_lost=on_lost,
                    on_back=back,
                )
            except QueueMissing:
                if self._device_queue is None or self._api is None or self.inbox.stopping.is_set():
                    raise
                self._recreate_queue()
                self.sync(on_synced)

    def sync(self, on_synced: Callable[[SyncPage], None]) -> int:
        """Catch up from the archive; a failure is reported, not raised (the queue goes on)."""
        if not self._history_available or self._api is None:
            return 0
        try:
            return Syncer(self._api, self._history).run(on_synced)
        except HistoryUnavailable as exc:
            logger.info("no sync: %s", exc)
            if "keeps no history" in str(exc):
                self._history_available = False  # an older server: do not ask again
            if self._on_sync_failed is not None:
                self._on_sync_failed(exc)
        except MessengerError as exc:
            logger.warning("sync failed: %s", exc)
            if self._on_sync_failed is not None:
                self._on_sync_failed(exc)
        return 0

    def _recreate_queue(self) -> None:
        assert self._api is not None
        logger.info("the device queue %s is gone; asking the server for it again", self.inbox.queue)
        name = self._api.redeclare_device_queue()
        self._device_queue = name
        self.inbox.queue = name
        if self._on_queue is not None:
            self._on_queue(name)

    def _drain_legacy(
        self,
        on_messages: Callable[[list[DeliveredMessage]], None],
        on_receipt: Callable[[ReceiptNotice], None] | None,
    ) -> int:
        """Take in what a legacy `inbox.<user>` still holds, once it is known to exist."""
        if self._history.state(_LEGACY_GONE_KEY) == "1":
            return 0
        legacy = inbox_queue(self._connection.username)
        waiting = queue_exists(self._connection, legacy)
        if waiting is None:
            self._history.set_state(_LEGACY_GONE_KEY, "1")  # never ask again on this device
            return 0
        if waiting == 0:
            return 0
        logger.info("draining %d messages from the legacy queue %s", waiting, legacy)
        since = self._device_since

        def older(messages: list[DeliveredMessage]) -> None:
            # While the server still binds the legacy inbox it gets a copy of everything,
            # and every device drains the same queue: what is younger than this device's
            # queue is in it too, and comes from there, in order. Only what is older is
            # shown from here (within the margin: the archive's unread catch-up has it).
            if since is not None:
                messages = [m for m in messages if m.sent_at < since - LEGACY_MARGIN]
            if messages:
                on_messages(messages)

        drain = InboxConsumer(self._connection, legacy)
        return drain.run(older, on_receipt, idle_timeout=LEGACY_IDLE_SECONDS)
