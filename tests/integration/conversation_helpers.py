"""Plain-pika devices for the conversation tests: a consumer on one device queue, and
publishing a receipt the way a client does. One pika connection per thread, always."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pika
import pika.exceptions

from protocol import PROTOCOL_VERSION
from protocol.messages import PROTOCOL_HEADER, SENT_MS_HEADER
from protocol.topology import (
    CONTENT_TYPE,
    OUTBOX_EXCHANGE,
    TYPE_MESSAGE,
    TYPE_RECEIPT,
    TYPE_RECEIPT_NOTICE,
)
from tests.integration.stack import AuthService, Broker, User, close_quietly, eventually


@dataclass
class Device:
    """Consumes one device queue as its user (the session token as password), acking each
    delivery, in a thread of its own until `stop()`."""

    broker: Broker
    user: User
    messages: list[dict[str, Any]] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    # what arrived, in order: ("message"|"receipt", body)
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Device:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the device did not connect"
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            connection = self.broker.connect(self.user.username, self.user.token)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=500)
            channel.basic_consume(self.user.device_queue, self._on_delivery)
            self._ready.set()
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.1)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
        finally:
            close_quietly(connection)

    def _on_delivery(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        decoded = json.loads(body)
        if props.type == TYPE_RECEIPT_NOTICE:
            self.receipts.append(decoded)
            self.log.append(("receipt", decoded))
        elif props.type == TYPE_MESSAGE:
            self.messages.append(decoded)
            self.log.append(("message", decoded))
        channel.basic_ack(method.delivery_tag)

    def wait_messages(self, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        def enough() -> bool:
            assert self.error is None, self.error
            return len(self.messages) >= count

        eventually(enough, timeout=timeout, interval=0.1)
        return self.messages

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def publish_receipt(
    broker: Broker, reader: User, message_id: str, to: str, status: str, notify: bool = True
) -> None:
    """A receipt as a client publishes it: to the outbox, with the reader's user_id."""
    connection = broker.connect(reader.username, reader.token)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        body = {"message_id": message_id, "to": to, "status": status, "notify_sender": notify}
        channel.basic_publish(
            OUTBOX_EXCHANGE,
            reader.username,
            json.dumps(body).encode(),
            pika.BasicProperties(
                content_type=CONTENT_TYPE,
                delivery_mode=pika.DeliveryMode.Persistent,
                user_id=reader.username,
                type=TYPE_RECEIPT,
                message_id=str(uuid.uuid4()),
                headers={
                    PROTOCOL_HEADER: PROTOCOL_VERSION,
                    SENT_MS_HEADER: int(time.time() * 1000),
                },
            ),
        )
    finally:
        close_quietly(connection)


def api(auth: AuthService, method: str, path: str, user: User | None = None, **kwargs: Any):
    headers = {"Authorization": f"Bearer {user.token}"} if user is not None else {}
    return httpx.request(method, f"{auth.url}{path}", headers=headers, timeout=30, **kwargs)


def whole_conversation(
    auth: AuthService, user: User, peer: str, limit: int = 200
) -> list[dict[str, Any]]:
    """Every message of a conversation, paging back from the newest by cursor."""
    messages: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": str(limit)}
    while True:
        response = api(auth, "GET", f"/v1/conversations/{peer}/messages", user, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        messages[:0] = page["messages"]
        if not page["has_more"]:
            return messages
        params = {"limit": str(limit), "before": page["messages"][0]["id"]}


def queue_exists(broker: Broker, queue: str) -> bool:
    """A passive declare as the auth service account."""
    connection = broker.connect("auth", broker.service_passwords["auth"])
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return False
    finally:
        with contextlib.suppress(Exception):
            connection.close()
