"""Consuming `archive.ingest`: batches committed, then acked, so nothing is lost and nothing
is stored twice.

A batch is what arrived until `batch_size` messages or `batch_wait` seconds of quiet; it is
stored in one transaction (one fsync), then acked with one `basic_ack(multiple=True)`.
Killed between the commit and the ack, the archive gets the batch again and the store skips
what it holds (idempotent by id). The queue has a single active consumer: a second archive
process waits as a standby. Only the relay may publish to the `archive` exchange; bodies are
still validated, and one that does not parse is logged and dropped, never retried forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from broker.backoff import backoff_delay
from protocol.messages import NOTIFY_SENDER_HEADER, DeliveredMessage, ReceiptNotice
from protocol.topology import ARCHIVE_QUEUE, TYPE_MESSAGE, TYPE_RECEIPT_NOTICE
from services.archive.settings import ArchiveSettings
from services.archive.store import Entry, IngestedReceipt, Store

logger = logging.getLogger(__name__)

_FAILURES = (pika.exceptions.AMQPError, AMQPConnectorException, OSError)


def decode(props: pika.spec.BasicProperties, body: bytes) -> Entry | None:
    """The stored form of one archive copy; None for a body that does not parse."""
    try:
        if props.type == TYPE_RECEIPT_NOTICE:
            headers = props.headers or {}
            notify = headers.get(NOTIFY_SENDER_HEADER, 1)
            return IngestedReceipt(ReceiptNotice.model_validate_json(body), bool(notify))
        if props.type in (TYPE_MESSAGE, None):
            return DeliveredMessage.model_validate_json(body)
    except ValidationError as exc:
        logger.error("dropped an archive copy that does not parse: %s", exc.errors()[:1])
        return None
    logger.error("dropped an archive copy of unknown type %r", props.type)
    return None


class Ingest:
    """The consumer thread's work: `run()` until `stop()`."""

    def __init__(
        self,
        settings: ArchiveSettings,
        store: Store,
        on_batch: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._on_batch = on_batch
        self._stopping = threading.Event()
        self.stored = 0  # entries newly stored since start (monitoring, tests)
        self.connected = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._consume()
                attempt = 0
            except (*_FAILURES, SQLAlchemyError) as exc:
                # A database error closes the connection too: the unacked batch comes again.
                self.connected.clear()
                attempt += 1
                delay = backoff_delay(attempt, self._settings.reconnect_max_delay_seconds)
                logger.warning("archive ingest stopped (%r); again in %.1f s", exc, delay)
                self._stopping.wait(delay)

    def _consume(self) -> None:
        parameters = [
            self._settings.connection_parameters(
                node, name="messenger-archive", heartbeat=30, blocked_connection_timeout=30
            )
            for node in self._settings.broker_nodes()
        ]
        connection = pika.BlockingConnection(parameters)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self._settings.batch_size * 2)
            self.connected.set()
            logger.info("consuming %s", ARCHIVE_QUEUE)
            self._loop(channel)
        finally:
            self.connected.clear()
            if connection.is_open:
                with contextlib.suppress(*_FAILURES):
                    connection.close()

    def _loop(self, channel: BlockingChannel) -> None:
        batch: list[Entry] = []
        last_tag = 0
        oldest = 0.0
        wait = self._settings.batch_wait_seconds
        for method, props, body in channel.consume(ARCHIVE_QUEUE, inactivity_timeout=wait):
            if method is not None:
                entry = decode(props, body)
                if entry is not None:
                    batch.append(entry)
                last_tag = method.delivery_tag
                if not oldest:
                    oldest = time.monotonic()
            full = len(batch) >= self._settings.batch_size
            stale = oldest and (method is None or time.monotonic() - oldest >= wait * 4)
            if last_tag and (full or stale):
                self.stored += self._store.ingest(batch)  # raises: nothing acked, redelivered
                channel.basic_ack(last_tag, multiple=True)
                self._on_batch(len(batch))
                batch, last_tag, oldest = [], 0, 0.0
            if self._stopping.is_set() and not last_tag:
                channel.cancel()
                return
