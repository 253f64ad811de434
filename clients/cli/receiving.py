"""`messenger inbox | listen`, and the receive pipeline that `chat` shares.

For each batch of messages the device queue delivers (what one I/O turn brought, up to the
prefetch), in this order: store them in the local history (keyed by id) in one transaction,
show those not shown before, send each sender a `delivered` receipt (and, for what a person
saw, one `read` receipt per sender), return so the library acks the batch with one frame.
A client that dies anywhere before the ack gets the messages again; the history stores them
once and shows them once (the only window for a second showing is between printing a batch
and the one SQLite write that records it was shown). What a sync brings from the archive
goes through the same steps (clients/library/devices.py says when).

A message from this user to someone else is a carbon (sent from another device): shown as
sent by this user (`--json`: its `from` is this user), never receipted.

Read receipts: the human output marks what it shows as read. `--json` does not: its reader
is a program, which may never put the message in front of a person (it still sends
`delivered`). `messenger settings read-receipts off` keeps the other person from learning it.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Annotated

import typer

from clients.cli.context import cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP, error_line
from clients.cli.output import Painter, err, json_line, message_line, out
from clients.library.connection import FOREVER, RECONNECT_WINDOW_SECONDS
from clients.library.conversations import ConversationsClient
from clients.library.devices import DeviceFeed
from clients.library.errors import MessengerError
from clients.library.history import History, StoredMessage
from clients.library.messaging import MessengerConnection
from clients.library.receipts import ReadReceipts, SettingsCache
from clients.library.sender import Sender
from protocol.conversations import ArchivedMessage, SyncPage
from protocol.messages import DeliveredMessage, ReceiptNotice

app = typer.Typer()

INBOX_IDLE_SECONDS = 1.0

# Test-only: `stored` or `shown` makes the process SIGKILL itself at that point of the
# pipeline (before the ack), so tests can prove that a crash loses and doubles nothing.
DIE_AT_ENV = "MESSENGER_TEST_DIE_AT"

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def die_at_checkpoint(point: str) -> None:
    if os.environ.get(DIE_AT_ENV) == point:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class Receiver:
    """The pure part of receiving: history first, then the screen, then the receipts."""

    def __init__(
        self,
        history: History,
        show: Callable[[StoredMessage], None],
        send_receipt: Callable[[str, str], None],
        on_delivered: Callable[[StoredMessage], None] | None = None,
        checkpoint: Callable[[str], None] = die_at_checkpoint,
        reads: ReadReceipts | None = None,
    ) -> None:
        self._history = history
        self._show = show
        self._send_receipt = send_receipt
        self._on_delivered = on_delivered
        self._checkpoint = checkpoint
        self._reads = reads
        self.shown = 0

    def on_messages(self, messages: list[DeliveredMessage]) -> None:
        """One delivery batch: stored in one transaction, then shown, then receipted."""
        stored = self._history.store_received_many(messages)
        self._checkpoint("stored")
        self._show_new(stored)
        self._checkpoint("shown")
        self._receipt_delivered(messages)

    def on_synced(self, page: SyncPage) -> None:
        """What the archive held for this device: stored, shown if new, receipts applied.
        `delivered` goes out only for what no device of this user had received yet."""
        stored = self._history.store_received_many(page.messages)
        if stored:
            self._checkpoint("stored")
        self._show_new(stored)
        if stored:
            self._checkpoint("shown")
        self._receipt_delivered([m for m in page.messages if m.status == "accepted"])
        for notice in page.receipts:
            self.on_receipt(notice)

    def on_receipt(self, notice: ReceiptNotice) -> None:
        """A receipt for this user's messages (accepted only from their recipient), or this
        user's own `read` from another device."""
        updated = self._history.apply_receipt(notice)
        if updated and self._on_delivered is not None:
            named = [m for m in updated if m.id == notice.message_id]
            self._on_delivered(named[0] if named else updated[-1])

    def _show_new(self, stored: Sequence[StoredMessage]) -> None:
        new: dict[str, StoredMessage] = {}  # ordered: a message twice in a batch shows once
        for row in stored:
            if not row.shown and row.id not in new:
                self._show(row)
                new[row.id] = row
        self._history.mark_shown_many(list(new))
        self.shown += len(new)
        if self._reads is not None and new:
            self._reads.shown(list(new.values()))

    def _receipt_delivered(self, messages: Sequence[DeliveredMessage | ArchivedMessage]) -> None:
        receipted: set[str] = set()
        for message in messages:
            # Not for a note to self or a carbon (this user sent it): no receipt to oneself.
            if message.sender == self._history.owner:
                continue
            if message.id not in receipted:
                receipted.add(message.id)
                self._send_receipt(message.id, message.sender)


def _printer(
    me: str, as_json: bool, names: Callable[[str], str | None]
) -> Callable[[StoredMessage], None]:
    paint = Painter.for_stream(sys.stdout)

    def show(message: StoredMessage) -> None:
        if as_json:
            out(json_line(message.to_json()))
        else:
            # A carbon (sent from another device) names whom it went to.
            carbon = message.sender == me and message.recipient != me
            out(message_line(message, me=me, names=names, paint=paint, show_recipient=carbon))

    return show


def read_receipts(history: History, api: ConversationsClient, sender: Sender) -> ReadReceipts:
    """`read` receipts through `sender`; whether the other person is told is the account's
    setting (cached)."""
    settings = SettingsCache(history, api.settings)
    return ReadReceipts(
        history,
        lambda message_id, to, notify: sender.send_receipt(message_id, to, "read", notify),
        settings.read_receipts,
    )


def sync_warning() -> Callable[[MessengerError], None]:
    """Says once per run that the archive could not be asked (not for an older server that
    keeps no history: nothing to say there)."""
    said: list[bool] = []

    def warn(error: MessengerError) -> None:
        if said or "keeps no history" in str(error):
            return
        said.append(True)
        err(error_line(f"could not catch up from the server's history ({error})", error.hint))

    return warn


def _receive(ctx: typer.Context, as_json: bool, idle_timeout: float | None) -> int:
    """`inbox` (an idle timeout) reconnects for a while and fails; `listen` (none) for as
    long as it runs, with a status line on stderr when it goes offline and comes back."""
    cli = cli_of(ctx)
    with logged_in(cli) as (session, history, names):
        session = cli.with_device(session)
        window = RECONNECT_WINDOW_SECONDS if idle_timeout is not None else FOREVER
        with (
            cli.conversations(session) as api,
            cli.connect(session, reconnect_window=window) as connection,
        ):
            if idle_timeout is None:
                connection.connection.outage.report = _status_line
            receiver = Receiver(
                history,
                show=_printer(session.username, as_json, names),
                send_receipt=lambda message_id, sender: connection.send_receipt(message_id, sender),
                reads=None if as_json else read_receipts(history, api, connection),
            )
            feed = DeviceFeed(
                connection.inbox,
                connection.connection,
                history,
                api,
                session.device_queue,
                on_queue=lambda queue: cli.save_device(session, None, queue),
                on_sync_failed=sync_warning(),
                device_since=session.device_since,
            )
            with _StopOnSignals(connection):
                feed.run(
                    receiver.on_messages,
                    receiver.on_receipt,
                    receiver.on_synced,
                    idle_timeout=idle_timeout,
                    give_up_after=window,
                )
        return receiver.shown


def _status_line(text: str) -> None:
    """`offline: …` / `back online …`: on stderr, so `listen --json` stays parseable."""
    paint = Painter.for_stream(sys.stderr)
    err(paint(text, "yellow" if text.startswith(("offline", "still")) else "green"))


class _StopOnSignals:
    """Ctrl-C and SIGTERM end `consume()` between messages, never inside one."""

    def __init__(self, connection: MessengerConnection) -> None:
        self._connection = connection
        self._previous: dict[int, object] = {}

    def __enter__(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self._connection.stop()

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


@app.command(epilog=EXIT_CODES_HELP)
def inbox(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Print everything waiting for you, oldest first, then exit."""
    shown = _receive(ctx, as_json, INBOX_IDLE_SECONDS)
    if shown == 0 and not as_json and sys.stdout.isatty():
        err("No new messages.")


@app.command(epilog=EXIT_CODES_HELP)
def listen(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Print messages as they arrive, until Ctrl-C.

    When the server goes away, a line on stderr says so, and it reconnects by itself for as
    long as it runs."""
    if not as_json and sys.stderr.isatty():
        err("Listening for messages; Ctrl-C stops.")
    _receive(ctx, as_json, None)
