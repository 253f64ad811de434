"""Declares each user's inbox queue on the broker, as the `auth` service account.

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
from collections.abc import Sequence
from typing import Protocol

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from protocol.topology import INBOX_EXCHANGE, inbox_queue
from services.auth.errors import BrokerLoginRefused, BrokerUnavailable
from services.auth.settings import AuthSettings

logger = logging.getLogger(__name__)

_FAILURES = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)
_REFUSED = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)


class Inboxes(Protocol):
    def declare(self, username: str) -> None:
        """Make sure `inbox.<username>` exists and is bound; raise BrokerUnavailable if not."""


class BrokerInboxes:
    def __init__(
        self,
        parameters: pika.ConnectionParameters | Sequence[pika.ConnectionParameters],
        queue_type: str,
    ) -> None:
        if isinstance(parameters, pika.ConnectionParameters):
            parameters = [parameters]
        self._parameters = list(parameters)
        self._queue_type = queue_type
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
        return cls(parameters, settings.inbox_queue_type)

    def declare(self, username: str) -> None:
        queue = inbox_queue(username)
        with self._lock:
            for attempt in (1, 2):
                try:
                    channel = self._open_channel()
                    channel.queue_declare(
                        queue, durable=True, arguments={"x-queue-type": self._queue_type}
                    )
                    channel.queue_bind(queue, INBOX_EXCHANGE, routing_key=username)
                    return
                except _REFUSED as exc:
                    self._drop()
                    user = self._parameters[0].credentials.username
                    logger.error("the broker refused the login of service account %r", user)
                    raise BrokerLoginRefused(
                        f"the broker refused the login of the {user!r} service account"
                    ) from exc
                except _FAILURES as exc:
                    self._drop()
                    if attempt == 2:
                        logger.error("cannot declare %s on the broker: %r", queue, exc)
                        raise BrokerUnavailable(f"cannot declare {queue}") from exc
                    # Usual after idling: pika's blocking connection sends no heartbeats
                    # while unused, so the broker drops it after a minute or two.
                    logger.info("broker connection lost (%r); reconnecting", exc)

    def close(self) -> None:
        with self._lock:
            self._drop()

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
