"""`messenger inbox | listen`, and the receive pipeline that `chat` shares.

For each batch of messages the inbox delivers (what one I/O turn brought, up to the
prefetch), in this order: store them in the local history (keyed by id) in one transaction,
show those not shown before, send each sender a `delivered` receipt, return so the library
acks the batch with one frame. A client that dies anywhere before the ack gets the messages
again; the history stores them once and shows them once (the only window for a second
showing is between printing a batch and the one SQLite write that records it was shown).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Annotated

import typer

from clients.cli.context import cli_of, logged_in
from clients.cli.edge import EXIT_CODES_HELP
from clients.cli.output import Painter, err, json_line, message_line, out
from clients.library.connection import FOREVER, RECONNECT_WINDOW_SECONDS
from clients.library.history import History, StoredMessage
from clients.library.messaging import MessengerConnection
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
    """The pure part of receiving: history first, then the screen, then the receipt."""

    def __init__(
        self,
        history: History,
        show: Callable[[StoredMessage], None],
        send_receipt: Callable[[str, str], None],
        on_delivered: Callable[[StoredMessage], None] | None = None,
        checkpoint: Callable[[str], None] = die_at_checkpoint,
    ) -> None:
        self._history = history
        self._show = show
        self._send_receipt = send_receipt
        self._on_delivered = on_delivered
        self._checkpoint = checkpoint
        self.shown = 0

    def on_messages(self, messages: list[DeliveredMessage]) -> None:
        """One delivery batch: stored in one transaction, then shown, then receipted."""
        stored = self._history.store_received_many(messages)
        self._checkpoint("stored")
        new: dict[str, None] = {}  # ordered set: a message twice in one batch shows once
        for row in stored:
            if not row.shown and row.id not in new:
                self._show(row)
                new[row.id] = None
        self._history.mark_shown_many(list(new))
        self.shown += len(new)
        self._checkpoint("shown")
        receipted: set[str] = set()
        for message in messages:
            if message.sender == self._history.owner:  # a note to self: no receipt to oneself
                continue
            if message.id not in receipted:
                receipted.add(message.id)
                self._send_receipt(message.id, message.sender)

    def on_receipt(self, notice: ReceiptNotice) -> None:
        updated = self._history.mark_delivered(notice.message_id)
        if updated is not None and self._on_delivered is not None:
            self._on_delivered(updated)


def _printer(
    me: str, as_json: bool, names: Callable[[str], str | None]
) -> Callable[[StoredMessage], None]:
    paint = Painter.for_stream(sys.stdout)

    def show(message: StoredMessage) -> None:
        if as_json:
            out(json_line(message.to_json()))
        else:
            out(message_line(message, me=me, names=names, paint=paint))

    return show


def _receive(ctx: typer.Context, as_json: bool, idle_timeout: float | None) -> int:
    """`inbox` (an idle timeout) reconnects for a while and fails; `listen` (none) for as
    long as it runs, with a status line on stderr when it goes offline and comes back."""
    cli = cli_of(ctx)
    with logged_in(cli) as (session, history, names):
        window = RECONNECT_WINDOW_SECONDS if idle_timeout is not None else FOREVER
        with cli.connect(session, reconnect_window=window) as connection:
            if idle_timeout is None:
                connection.connection.outage.report = _status_line
            receiver = Receiver(
                history,
                show=_printer(session.username, as_json, names),
                send_receipt=lambda message_id, sender: connection.send_receipt(message_id, sender),
            )
            with _StopOnSignals(connection):
                connection.consume_batches(
                    receiver.on_messages, receiver.on_receipt, idle_timeout=idle_timeout
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
    """Print messages as they arrive, until Ctrl-C. When the server goes away, a line on
    stderr says so, and it reconnects by itself for as long as it runs."""
    if not as_json and sys.stderr.isatty():
        err("Listening for messages; Ctrl-C stops.")
    _receive(ctx, as_json, None)
