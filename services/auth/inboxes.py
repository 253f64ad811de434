"""The broker side of accounts, as the `auth` service account: each user's anchor queue, each
device's queue, and the legacy per-user inbox.

- `user.<name>` (anchor): bound to `inbox` with key `<name>`, holds nothing (`x-max-length`
  0, drop-head). It makes every publish to an existing user routable, so the relay's
  "unroutable" still means "no such user", also for users who never logged in.
- `device.<name>.<device_id>`: one per login, bound with key `<name>`; bounded in length
  (drop-head: an abandoned device never blocks anybody; it catches up from the archive) and
  in idle lifetime (`x-expires`).
- `inbox.<name>` (legacy): declared and bound at sign-up only while `legacy_inboxes` is on
  (clients that consume it are still about); `migrate()` unbinds it otherwise.

One lazily opened pika BlockingConnection, used under a lock (pika connections are not
thread-safe). A failed operation is retried once on a fresh connection, which covers a
connection the broker dropped while idle; a second failure means the broker is unavailable.
On a cluster, the connection goes to the first node of `MESSENGER_AUTH_AMQP_NODES` that
answers (pika tries the parameter sets in order), so a dead node costs one refused connect.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from protocol.topology import (
    INBOX_EXCHANGE,
    carbon_key,
    device_queue,
    inbox_queue,
    user_anchor_queue,
)
from services.auth.errors import BrokerLoginRefused, BrokerUnavailable
from services.auth.settings import AuthSettings

logger = logging.getLogger(__name__)

_FAILURES = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)
_REFUSED = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)
T = TypeVar("T")


class Anchors(Protocol):
    def declare(self, username: str) -> None:
        """Make sure the user's anchor exists and is bound; raise BrokerUnavailable if not."""


class Inboxes(Anchors, Protocol):
    def declare_device(self, username: str, device_id: str) -> str:
        """Declare and bind a device queue; its name. BrokerUnavailable if not possible."""

    def delete_device(self, queue: str) -> None:
        """Delete a device queue (gone already: fine)."""

    def delete_user(self, username: str) -> None:
        """Delete the anchor and the legacy inbox of a deleted account."""


@dataclass(frozen=True)
class DeviceLimits:
    max_length: int = 10_000
    expires_ms: int = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class MigrationReport:
    anchors: int = 0
    unbound: int = 0
    deleted: int = 0
    kept: int = 0


class BrokerInboxes:
    def __init__(
        self,
        parameters: pika.ConnectionParameters | Sequence[pika.ConnectionParameters],
        queue_type: str,
        limits: DeviceLimits | None = None,
        legacy_inboxes: bool = True,
    ) -> None:
        if isinstance(parameters, pika.ConnectionParameters):
            parameters = [parameters]
        self._parameters = list(parameters)
        self._queue_type = queue_type
        self._limits = limits or DeviceLimits()
        self.legacy_inboxes = legacy_inboxes
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> BrokerInboxes:
        parameters = [
            settings.connection_parameters(
                node,
                name="messenger-auth",
                heartbeat=30,
                blocked_connection_timeout=10,
                stack_timeout=10,
            )
            for node in settings.broker_nodes()
        ]
        limits = DeviceLimits(
            max_length=settings.device_queue_max_length,
            expires_ms=int(settings.device_queue_idle_days * 24 * 3600 * 1000),
        )
        return cls(parameters, settings.inbox_queue_type, limits, settings.legacy_inboxes)

    def declare(self, username: str) -> None:
        def run(channel: BlockingChannel) -> None:
            anchor = user_anchor_queue(username)
            channel.queue_declare(anchor, durable=True, arguments=self._anchor_arguments())
            channel.queue_bind(anchor, INBOX_EXCHANGE, routing_key=username)
            if self.legacy_inboxes:
                legacy = inbox_queue(username)
                channel.queue_declare(
                    legacy, durable=True, arguments={"x-queue-type": self._queue_type}
                )
                channel.queue_bind(legacy, INBOX_EXCHANGE, routing_key=username)

        self._run(f"the queues of {username}", run)

    def declare_device(self, username: str, device_id: str) -> str:
        queue = device_queue(username, device_id)

        def run(channel: BlockingChannel) -> None:
            arguments: dict[str, object] = {
                "x-queue-type": self._queue_type,
                "x-max-length": self._limits.max_length,
                "x-overflow": "drop-head",
                "x-expires": self._limits.expires_ms,
            }
            channel.queue_declare(queue, durable=True, arguments=arguments)
            channel.queue_bind(queue, INBOX_EXCHANGE, routing_key=username)
            channel.queue_bind(queue, INBOX_EXCHANGE, routing_key=carbon_key(username))

        self._run(queue, run)
        return queue

    def delete_device(self, queue: str) -> None:
        self._run(queue, lambda channel: self._delete_queue(channel, queue))

    def delete_user(self, username: str) -> None:
        def run(channel: BlockingChannel) -> None:
            self._delete_queue(channel, user_anchor_queue(username))
            self._delete_queue(channel, inbox_queue(username))

        self._run(f"the queues of {username}", run)

    def migrate(self, usernames: Iterable[str]) -> MigrationReport:
        """Anchors for every user; legacy inboxes unbound and, when empty, deleted (unless
        `legacy_inboxes` is on: then they stay bound). Idempotent."""
        anchors = unbound = deleted = kept = 0
        for username in usernames:
            self.declare(username)
            anchors += 1
            if self.legacy_inboxes:
                continue
            outcome = self._run(inbox_queue(username), partial(self._retire, username))
            if outcome is None:
                continue
            unbound += 1
            if outcome:
                deleted += 1
            else:
                kept += 1  # its owner's client drains it
        return MigrationReport(anchors, unbound, deleted, kept)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- internals -------------------------------------------------------------------------

    def _anchor_arguments(self) -> dict[str, object]:
        return {"x-queue-type": self._queue_type, "x-max-length": 0, "x-overflow": "drop-head"}

    def _retire(self, username: str, channel: BlockingChannel) -> bool | None:
        """Unbind the legacy inbox; delete it when empty. None: there is none; True:
        deleted; False: kept (it holds messages)."""
        legacy = inbox_queue(username)
        try:
            frame = channel.queue_declare(legacy, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                self._channel = None
                return None
            raise
        channel.queue_unbind(legacy, INBOX_EXCHANGE, routing_key=username)
        if int(frame.method.message_count) == 0:
            channel.queue_delete(legacy, if_empty=True)
            return True
        return False

    def _delete_queue(self, channel: BlockingChannel, queue: str) -> None:
        # RabbitMQ answers delete-ok for a queue that does not exist (3.x and 4.x alike).
        channel.queue_delete(queue)

    def _run(self, what: str, operation: Callable[[BlockingChannel], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                try:
                    return operation(self._open_channel())
                except _REFUSED as exc:
                    self._drop()
                    user = self._parameters[0].credentials.username
                    logger.error("the broker refused the login of service account %r", user)
                    raise BrokerLoginRefused(
                        f"the broker refused the login of the {user!r} service account"
                    ) from exc
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._channel = None  # the connection is fine; the channel is gone
                    if attempt == 2 or exc.reply_code not in (404, 405):
                        logger.error("the broker refused an operation on %s: %r", what, exc)
                        raise BrokerUnavailable(f"cannot change {what}") from exc
                except _FAILURES as exc:
                    self._drop()
                    if attempt == 2:
                        logger.error("cannot change %s on the broker: %r", what, exc)
                        raise BrokerUnavailable(f"cannot change {what}") from exc
                    # Usual after idling: pika's blocking connection sends no heartbeats
                    # while unused, so the broker drops it after a minute or two.
                    logger.info("broker connection lost (%r); reconnecting", exc)
            raise AssertionError("unreachable")

    def _open_channel(self) -> BlockingChannel:
        if self._connection is None or not self._connection.is_open:
            self._connection = pika.BlockingConnection(self._parameters)
            self._channel = None
            logger.info("connected to the broker as %s", self._parameters[0].credentials.username)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
        return self._channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*_FAILURES):  # it is being thrown away anyway
                connection.close()
