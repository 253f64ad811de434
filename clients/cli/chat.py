"""`messenger chat USERNAME`: a conversation in the terminal.

Three threads, each owning what it touches: the prompt (prompt_toolkit, main thread), the
inbox consumer (its own broker connection, with the library's InboxConsumer and a Sender for
receipts; stores, shows, receipts, acks) and the sender (its own broker connection and
Sender; sends what the prompt hands it, one at a time, in order). Reconnecting is the
library's (connection.py): both connections keep at it for as long as the chat runs, the
consumer's says so on screen (`offline: …`, `back online …`). A line typed while offline
waits in the sender's queue, marked `queued, will send when back online`, and goes out
when the connection returns; one still waiting when the chat ends is listed as not sent.
`patch_stdout` makes whatever the other two print appear above the line being typed, which
prompt_toolkit then redraws intact. (prompt_toolkit is imported only when a chat starts: the
other commands start faster without it.)
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from clients.cli.completion import complete_peer
from clients.cli.context import DELETED_USER, Cli, cli_of, logged_in
from clients.cli.conversation import peer_name
from clients.cli.edge import EXIT_CODES_HELP, error_line
from clients.cli.output import NameLookup, Painter, clean, message_line, person
from clients.cli.receiving import Receiver, read_receipts
from clients.cli.sending import (
    ANSWER_TIMEOUT,
    explain_rejection,
    record_queued,
    record_sent,
    validated,
)
from clients.library.connection import FOREVER, Connection
from clients.library.consumer import InboxConsumer
from clients.library.conversations import ConversationsClient
from clients.library.devices import DeviceFeed
from clients.library.errors import (
    AccountDeleted,
    AuthenticationFailed,
    BrokerRefused,
    DeliveryUncertain,
    InvalidInput,
    MessageRejected,
    MessengerError,
    NotConfirmed,
    NotFound,
)
from clients.library.history import History, StoredMessage
from clients.library.pages import fill_recent
from clients.library.receipts import ReadReceipts
from clients.library.sender import Sender

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

app = typer.Typer()

BACKLOG = 20
# Between lines the sender looks at its connection this often (a loss is noticed, and
# mended, before the next line is typed).
KEEP_ALIVE_SECONDS = 0.5
QUIT_COMMANDS = {"/quit", "/exit", "/q"}
HEADER_HINT = "Enter sends · /quit or Ctrl-D leaves"
HELP_LINE = (
    f"{HEADER_HINT} · /help shows this · a line starting with // sends it with one /"
    " · ✓ accepted by the server · ✓✓ delivered to their device · ✓✓ read: they saw it"
)


class ChatScreen:
    """Lines above the prompt, from any thread (patch_stdout serialises them)."""

    def __init__(self, me: str, peer: str, names: NameLookup, paint: Painter) -> None:
        self.me = me
        self.peer = peer
        self.names = names
        self.paint = paint
        self._lock = threading.Lock()
        self._seen: set[str] = set()

    def line(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def message(self, message: StoredMessage) -> None:
        """Show a message once: a note to self is both sent (by the sender thread) and
        received (by the consumer), whichever comes first shows it."""
        with self._lock:
            if message.id in self._seen:
                return
            self._seen.add(message.id)
        line = message_line(message, me=self.me, names=self.names, paint=self.paint)
        other = message.sender if message.sender != self.me else message.recipient
        if other != self.peer:
            line += self.paint(f"  (not this chat; `messenger chat {other}`)", "dim")
        self.line(line)

    def delivered(self, message: StoredMessage) -> None:
        """A receipt moved one of our messages on: `✓✓ delivered` or `✓✓ read` (a read
        covers the earlier ones too: one line names the newest)."""
        if message.recipient != self.peer:
            return
        color = "blue" if message.status == "read" else "green"
        self.line(self.paint(f"        ✓✓ {message.status}: {self.preview(message.text)}", color))

    def problem(self, message: str, hint: str | None = None) -> None:
        self.line(error_line(message, hint, prefix="✗"))

    def status(self, text: str) -> None:
        """`offline: …`, `back online …`: the connection's state, from the library."""
        self.line(self.paint(text, "yellow" if text.startswith(("offline", "still")) else "dim"))

    def preview(self, text: str) -> str:
        one_line = clean(text).replace("\n", " ")
        return one_line if len(one_line) <= 40 else one_line[:39] + "…"


class ChatSender(threading.Thread):
    """Sends what the prompt queues, in order, on a connection no other thread touches.
    Between lines it keeps the connection alive (reconnecting as soon as it is lost), and a
    send waits out an outage: the line goes when the broker is back, published again under
    the same client id if it was on its way when the connection went (shown once)."""

    def __init__(self, connection: Connection, history: History, screen: ChatScreen) -> None:
        super().__init__(name="chat-sender", daemon=True)
        self._connection = connection
        self.stopping = threading.Event()
        self._sender = Sender(connection, interrupt=self.stopping, reconnect_window=FOREVER)
        self._history = history
        self._screen = screen
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._unsent: list[str] = []  # typed, not sent yet (the one being sent included)
        self._lock = threading.Lock()

    @property
    def offline(self) -> bool:
        return self._connection.outage.offline

    def submit(self, text: str, offline: bool = False) -> None:
        """Queue a line; `offline` (or this connection being offline) says so on screen."""
        with self._lock:
            self._unsent.append(text)
        if offline or self.offline:
            self._screen.line(
                self._screen.paint(
                    f"        … queued, will send when back online: {self._screen.preview(text)}",
                    "yellow",
                )
            )
        self._queue.put(text)

    def finish(self, timeout: float, offline: bool = False) -> None:
        """Send what is queued, unless offline; then list what was not sent."""
        self._queue.put(None)
        if not (offline or self.offline):
            self.join(timeout)
        self.stopping.set()  # ends a wait to reconnect
        self.join(5)
        with self._lock:
            unsent, self._unsent = self._unsent, []
        for text in unsent:
            self._screen.problem(
                f"not sent (the chat ended while offline): {self._screen.preview(text)}"
            )

    def run(self) -> None:
        try:
            while (text := self._next()) is not None:
                if self._send(text):
                    with self._lock, contextlib.suppress(ValueError):
                        self._unsent.remove(text)
        finally:
            self._connection.close()

    def _next(self) -> str | None:
        """The next line; while none comes, keep the connection open (or reopen it)."""
        while not self.stopping.is_set():
            try:
                return self._queue.get(timeout=KEEP_ALIVE_SECONDS)
            except queue.Empty:
                try:
                    self._sender.keep_alive()
                except MessengerError:
                    if self.stopping.is_set():
                        return None
                    raise
        return None

    def _send(self, raw: str) -> bool:
        """Send one line and say what became of it; False when the chat ended while the
        line waited for the connection (finish() lists it as not sent)."""
        peer = self._screen.peer
        try:
            to, text = validated(peer, raw)
            answer = self._sender.send(to, text, timeout=ANSWER_TIMEOUT)
        except MessengerError as exc:
            settled = MessageRejected | NotConfirmed | DeliveryUncertain | InvalidInput
            if self.stopping.is_set() and not isinstance(exc, settled):
                return False
            self._failed(raw, exc)
        else:
            stored = record_sent(self._history, to, text, answer)
            self._screen.message(stored)
            if not stored.shown:  # a note to self: seen here, not again by `inbox`
                self._history.mark_shown_many([stored.id])
        return True

    def _failed(self, raw: str, error: MessengerError) -> None:
        """Say what became of the line: refused, held by the broker (… queued), or what
        else is true of it (the library's error says whether it was sent)."""
        peer = self._screen.peer
        if isinstance(error, MessageRejected):
            explained = explain_rejection(error, peer, self._screen.names)
            self._screen.problem(str(explained), explained.hint)
        elif isinstance(error, NotConfirmed):
            self._screen.message(record_queued(self._history, peer, raw, error))
        elif isinstance(error, InvalidInput | BrokerRefused):
            self._screen.problem(f"not sent: {error}", error.hint)
        else:
            self._screen.problem(str(error), error.hint)


class ChatConsumer(threading.Thread):
    """Consumes this device's queue until stopped, through outages (syncing from the archive
    at each connect); ends on a refusal. Marks read what the chat shows (the backlog first)."""

    def __init__(
        self,
        feed: DeviceFeed,
        receipts: Sender,
        close: Callable[[], None],
        history: History,
        screen: ChatScreen,
        on_failure: Callable[[MessengerError], None],
        reads: ReadReceipts | None = None,
        backlog: list[StoredMessage] | None = None,
    ) -> None:
        super().__init__(name="chat-consumer", daemon=True)
        self._feed = feed
        self._close = close
        self._screen = screen
        self._on_failure = on_failure
        self._reads = reads
        self._backlog = backlog or []
        self._receiver = Receiver(
            history,
            show=screen.message,
            send_receipt=lambda message_id, sender: receipts.send_receipt(message_id, sender),
            on_delivered=screen.delivered,
            reads=reads,
        )

    @classmethod
    def on(
        cls,
        connection: Connection,
        history: History,
        screen: ChatScreen,
        on_failure: Callable[[MessengerError], None],
        *,
        api: ConversationsClient | None = None,
        device_queue: str | None = None,
        on_queue: Callable[[str], object] | None = None,
        backlog: list[StoredMessage] | None = None,
        device_since: datetime | None = None,
    ) -> ChatConsumer:
        inbox = InboxConsumer(connection)
        receipts = Sender(connection, interrupt=inbox.stopping, reconnect_window=FOREVER)
        connection.outage.report = screen.status
        feed = DeviceFeed(
            inbox,
            connection,
            history,
            api,
            device_queue,
            on_queue=on_queue,
            on_sync_failed=lambda error: (
                screen.problem(
                    f"could not catch up from the server's history ({error})", error.hint
                )
                if "keeps no history" not in str(error)
                else None
            ),
            device_since=device_since,
        )
        reads = read_receipts(history, api, receipts) if api is not None else None
        return cls(feed, receipts, connection.close, history, screen, on_failure, reads, backlog)

    def stop(self) -> None:
        self._feed.stop()

    def run(self) -> None:
        try:
            if self._reads is not None and self._backlog:
                self._reads.shown(self._backlog)  # what the chat opened with was seen
            self._feed.run(
                self._receiver.on_messages,
                self._receiver.on_receipt,
                self._receiver.on_synced,
                give_up_after=FOREVER,
            )
        except MessengerError as exc:
            self._on_failure(exc)
        finally:
            self._close()


class ChatPrompt:
    """The prompt loop; can be ended from another thread."""

    def __init__(self, me: str, paint: Painter) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import ANSI

        prompt = paint(f"{me} › ", "bold", "green")  # noqa: RUF001
        self._session: PromptSession[str] = PromptSession(
            ANSI(prompt) if paint.color else prompt, erase_when_done=True
        )
        self.failure: MessengerError | None = None

    def read(self) -> str | None:
        """The next line typed, or None to leave."""
        if self.failure is not None:
            return None
        try:
            return self._session.prompt(pre_run=self._leave_if_failed)
        except (EOFError, KeyboardInterrupt):
            return None

    def _leave_if_failed(self) -> None:
        """Runs as the prompt starts: covers a failure that came just before it."""
        if self.failure is not None:
            self._session.app.exit(exception=EOFError())

    def end(self, failure: MessengerError) -> None:
        self.failure = failure
        application = self._session.app
        loop = getattr(application, "loop", None)
        if application.is_running and loop is not None:
            loop.call_soon_threadsafe(lambda: application.exit(exception=EOFError()))


@app.command(epilog=EXIT_CODES_HELP)
def chat(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Who to talk to.", autocompletion=complete_peer)],
) -> None:
    """Talk with USERNAME: earlier messages first, new ones as they come, Enter sends."""
    from prompt_toolkit.patch_stdout import patch_stdout

    cli = cli_of(ctx)
    peer = peer_name(username)
    with logged_in(cli) as (session, history, names):
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise InvalidInput(
                "chat needs a terminal",
                hint="in scripts, use `messenger send` and `messenger listen`",
            )
        session = cli.with_device(session)
        display_name = _peer_display_name(cli, session.token, peer)
        names.remember(peer, display_name)
        meta = cli.meta()
        api = cli.conversations(session)
        paint = Painter.for_stream(sys.stdout)
        screen = ChatScreen(session.username, peer, names, paint)
        prompt = ChatPrompt(session.username, paint)
        try:
            fill_recent(api, history, peer, BACKLOG)  # the last messages, from the server
        except (AuthenticationFailed, NotFound):
            raise
        except MessengerError as exc:
            if "keeps no history" not in str(exc):
                screen.problem(f"showing the local history only ({exc})")
        backlog = history.conversation(peer, BACKLOG)
        for message in backlog:  # history first
            screen.message(message)
        title = f"── Chat with {person(peer, display_name)} · {HEADER_HINT} ──"
        screen.line(paint(title, "dim"))
        receiving = cli.broker(session, meta)
        try:
            sending = cli.broker(session, meta)
        except BaseException:
            receiving.close()
            raise
        # From here on each thread closes its own connection when it ends.
        consumer = ChatConsumer.on(
            receiving,
            history,
            screen,
            on_failure=prompt.end,
            api=api,
            device_queue=session.device_queue,
            on_queue=lambda queue: cli.save_device(session, None, queue),
            backlog=backlog,
            device_since=session.device_since,
        )
        sender = ChatSender(sending, history, screen)
        online = receiving.outage
        with patch_stdout(raw=True):
            consumer.start()
            sender.start()
            try:
                _converse(prompt, sender, screen, lambda: online.offline)
            finally:
                sender.finish(timeout=ANSWER_TIMEOUT + 5, offline=online.offline)
                consumer.stop()
                consumer.join(timeout=5)
        if prompt.failure is not None:
            raise prompt.failure


def _peer_display_name(cli: Cli, token: str, peer: str) -> str:
    """A clear error for a typo, before the screen opens; a deleted account is still a
    conversation (its messages stay), shown as a deleted user."""
    try:
        with cli.accounts() as accounts:
            return accounts.user(peer, token=token).display_name
    except AccountDeleted:
        return DELETED_USER


def _converse(
    prompt: ChatPrompt, sender: ChatSender, screen: ChatScreen, offline: Callable[[], bool]
) -> None:
    while (line := prompt.read()) is not None:
        command = line.strip()
        if command.startswith("//"):  # the escape for text that starts with a slash
            sender.submit(line.replace("//", "/", 1), offline())
        elif command.startswith("/"):
            word = command.split()[0]
            if word in QUIT_COMMANDS:
                return
            if word != "/help":  # a typo is never sent to the other person
                screen.problem(f"no command {word}; nothing was sent")
            screen.line(screen.paint(HELP_LINE, "dim"))
        elif command:
            sender.submit(line, offline())
