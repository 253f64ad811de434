"""Factories for the relay's integration tests: connections as a user, a background inbox
reader, a background sender. One pika connection per thread, always."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from clients.library.messaging import MessengerConnection
from protocol.accounts import Meta
from protocol.messages import DeliveredMessage, ReceiptNotice, RelayAnswer
from tests.integration.stack import AuthService, User

# Fast reconnects keep the broker-restart tests short.
FAST_RELAY = {"MESSENGER_RELAY_RECONNECT_MAX_DELAY_SECONDS": "1"}


def meta_of(auth: AuthService) -> Meta:
    response = httpx.get(f"{auth.url}/v1/meta", timeout=10)
    response.raise_for_status()
    return Meta.model_validate(response.json())


def connect(auth: AuthService, user: User) -> MessengerConnection:
    return MessengerConnection.open(meta_of(auth), user.username, user.token)


def read_inbox(auth: AuthService, user: User, idle_timeout: float = 3.0) -> list[DeliveredMessage]:
    """Everything waiting for `user`, acked; returns once nothing came for `idle_timeout` s."""
    received: list[DeliveredMessage] = []
    with connect(auth, user) as connection:
        connection.consume(received.append, idle_timeout=idle_timeout)
    return received


@dataclass
class InboxReader:
    """Consumes `user`'s inbox in a thread of its own until `stop()`."""

    auth: AuthService
    user: User
    received: list[DeliveredMessage] = field(default_factory=list)
    receipts: list[ReceiptNotice] = field(default_factory=list)
    on_message: Callable[[DeliveredMessage], None] | None = None
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _connection: MessengerConnection | None = None
    _thread: threading.Thread | None = None

    def start(self) -> InboxReader:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the inbox reader did not connect"
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            self._connection = connect(self.auth, self.user)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._connection.consume(self._handle, self.receipts.append)
        except BaseException as exc:
            self.error = exc
        finally:
            self._connection.close()

    def _handle(self, message: DeliveredMessage) -> None:
        self.received.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def unique_texts(self) -> set[str]:
        return {m.text for m in self.received}

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.stop()
        if self._thread is not None:
            self._thread.join(30)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> InboxReader:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


@dataclass
class BackgroundSender:
    """`send_many` in a thread of its own."""

    auth: AuthService
    user: User
    messages: list[tuple[str, str]]
    window: int = 200
    timeout: float = 60.0
    answers: list[RelayAnswer] = field(default_factory=list)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> BackgroundSender:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with connect(self.auth, self.user) as connection:
                self.answers = connection.send_many(
                    self.messages, window=self.window, timeout=self.timeout
                )
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 90) -> list[RelayAnswer]:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the sender did not finish"
        if self.error is not None:
            raise self.error
        return self.answers
