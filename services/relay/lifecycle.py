"""The relay's connection, from start to stop: connect, open the channels, fail over, stop.

One thread, one I/O loop, one connection at a time, two channels on it: the worker's
(worker.py: consume, publish, ack) and the answers' (answers.py). On a cluster the relay
is given every node (MESSENGER_RELAY_AMQP_NODES) and uses one at a time: when its
connection fails or is lost it connects to the next node at once, and waits (capped
backoff) only after every node has failed in a row. What was in flight on the lost
connection is redelivered by the broker; the server id is stable (routing.py), so a message
relayed twice reaches its recipient twice with one id, and is shown once.

node_health.py (the threads that watch for nodes that are down, a RabbitMQ 3.10
workaround) is wired in here and nowhere else; status.py's file says where all this stands.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pika.channel
import pika.connection
from pika.adapters.select_connection import SelectConnection

from broker.errors import Failure, classify, connection_lost, describe
from broker.nodes import NodeRotation
from services.relay.answers import AnswerChannel
from services.relay.ids import IdGenerator
from services.relay.node_health import NodeHealth
from services.relay.rate_limits import Rate, RateLimits
from services.relay.settings import RelaySettings
from services.relay.status import Counters, Lifecycle, State, StatusFile, StopReport
from services.relay.worker import OutboxWorker

logger = logging.getLogger(__name__)

# An auth refusal is not retried forever: a wrong password does not fix itself. A few tries
# cover a broker that accepts connections a moment before its definitions are loaded.
MAX_AUTH_REFUSALS = 5
# Reconnect attempts logged as warnings before they become errors.
ESCALATE_AFTER_ATTEMPTS = 10
STATS_LOG_INTERVAL_SECONDS = 30.0


class Relay:
    """Runs until `request_stop()`; moves to the next node when the broker goes."""

    def __init__(
        self,
        settings: RelaySettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ids: IdGenerator | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._ids = ids or IdGenerator()
        # One set of buckets for the relay's life: a reconnect must not refill a flooder's.
        self._limits = RateLimits(
            sender=Rate(settings.sender_rate, settings.sender_burst),
            recipient=Rate(settings.recipient_rate, settings.recipient_burst),
            receipts=Rate(settings.receipt_rate, settings.receipt_burst),
            clock=time.monotonic,
        )
        self._nodes = NodeRotation(
            settings.broker_nodes(), max_delay=settings.reconnect_max_delay_seconds
        )
        self.counters = Counters()
        self.lifecycle = Lifecycle()
        self._status = StatusFile(settings.status_file)
        self._stop_requested = threading.Event()
        self._health = NodeHealth(settings, self._stop_requested)
        self._auth_refusals = 0
        self._failed = False
        self._failure = ""
        self._connection: SelectConnection | None = None
        self._worker: OutboxWorker | None = None

    # -- public ----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped. 0 after a clean stop, 1 when the broker keeps refusing us."""
        attempt = 0
        self._health.start()
        while not self._stop_requested.is_set():
            attempt += 1
            self._failure = "the broker closed the connection"
            self._set_state("connecting")
            self._connection = SelectConnection(
                parameters=self._settings.connection_parameters(
                    self._nodes.current, name=f"messenger-relay pid {os.getpid()}", heartbeat=30
                ),
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
            )
            self._connection.ioloop.start()
            self._connection.ioloop.close()
            self._connection = self._worker = None
            if self._failed:
                self._set_state("failed")
                return 1
            if self._stop_requested.is_set():
                break
            self._health.before_reconnect()
            delay = self._nodes.failed()
            level = (
                logging.ERROR if self._nodes.failures > ESCALATE_AFTER_ATTEMPTS else logging.WARNING
            )
            logger.log(level, "%s; reconnecting to the broker in %.1f s (%s, attempt %d)",
                       self._failure, delay, self._where(), attempt + 1)  # fmt: skip
            self.lifecycle.reconnects += 1
            self.lifecycle.last_failure = self._failure
            self._set_state("reconnecting")
            self._sleep(delay)
        logger.info("relay stopped (%s)", self.counters.line())
        self._set_state("stopped")
        return 0

    def request_stop(self) -> None:
        """Thread- and signal-safe: stop consuming, finish what is in flight, close."""
        self._stop_requested.set()
        connection = self._connection
        if connection is not None:
            connection.ioloop.add_callback_threadsafe(self._begin_shutdown)

    # -- the connection --------------------------------------------------------------------

    def _where(self) -> str:
        host, port = self._nodes.current
        return f"{host}:{port}"

    def _on_connection_open(self, connection: pika.connection.Connection) -> None:
        logger.info("connected to the broker at %s", self._where())
        self._auth_refusals = 0
        self._health.up(self._nodes.current)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(
        self, _connection: pika.connection.Connection, error: BaseException | str
    ) -> None:
        where = self._where()
        if isinstance(error, BaseException) and classify(error) is Failure.LOGIN_REFUSED:
            self._auth_refusals += 1
            self.lifecycle.login_refusals += 1
            self._failure = (
                f"the broker at {where} refused the relay's login ({self._auth_refusals} of "
                f"{MAX_AUTH_REFUSALS}): check MESSENGER_RELAY_AMQP_USER/PASSWORD and the vhost"
            )
            if self._auth_refusals >= MAX_AUTH_REFUSALS:
                logger.error("%s; giving up", self._failure)
                self._failed = True
        else:
            self.lifecycle.unreachable += 1
            self._failure = f"cannot reach the broker at {where} ({describe(error)})"
            self._health.down(self._nodes.current)
        self._stop_ioloop()

    def _on_connection_closed(
        self, _connection: pika.connection.Connection, reason: BaseException
    ) -> None:
        in_flight = self._worker.in_flight if self._worker is not None else 0
        self._worker = None
        self._health.connection_closed(self._nodes.current, reason)
        if self._stop_requested.is_set():
            logger.info("connection closed")
        else:
            if connection_lost(reason):
                self.lifecycle.connections_lost += 1
            self._failure = (
                f"lost the broker connection ({describe(reason)}; the broker redelivers the "
                f"{in_flight} messages that were in flight)"
            )
        self._stop_ioloop()

    def _stop_ioloop(self) -> None:
        if self._connection is not None:
            self._connection.ioloop.stop()

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        connection = self._connection
        assert connection is not None
        if self._stop_requested.is_set():
            connection.close()
            return
        node = self._nodes.current
        self._health.connected_to(node)
        answers = AnswerChannel(
            connection,
            counters=self.counters,
            reopen=lambda: not self._stop_requested.is_set(),
            check=self._health.answerability,
            on_open=lambda answer_channel: self._health.learn_name(
                answer_channel, node, on_learned=answers.flush
            ),
        )
        answers.open()
        channel.add_on_close_callback(self._on_channel_closed)
        self._worker = OutboxWorker(
            connection,
            channel,
            settings=self._settings,
            answers=answers,
            counters=self.counters,
            clock=self._clock,
            ids=self._ids,
            limits=self._limits,
            on_consuming=self._on_consuming,
            on_finished=self._close,
        )
        self._worker.start()

    def _on_consuming(self) -> None:
        self._nodes.succeeded()
        self.lifecycle.consuming_sessions += 1
        self._set_state("consuming")
        if self._connection is not None:
            self._connection.ioloop.call_later(STATS_LOG_INTERVAL_SECONDS, self._log_stats)
            if self._settings.status_file is not None:
                self._connection.ioloop.call_later(
                    self._settings.status_interval_seconds, self._refresh_status
                )

    def _on_channel_closed(self, _channel: pika.channel.Channel, reason: BaseException) -> None:
        if not self._stop_requested.is_set():
            logger.error(
                "the broker closed the relay's channel: %s; reconnecting", describe(reason)
            )
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()

    # -- stopping --------------------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        connection, worker = self._connection, self._worker
        if connection is None or self.lifecycle.stop is not None:
            return
        if not connection.is_open or worker is None:
            if connection.is_open:
                connection.close()
            else:
                self._stop_ioloop()
            return
        self.lifecycle.stop = StopReport(graceful=True, in_flight=worker.in_flight)
        worker.shutdown()

    def _close(self) -> None:
        """The worker is done (or out of time): close the connection."""
        connection, worker = self._connection, self._worker
        if connection is None or not connection.is_open:
            return
        left = worker.in_flight if worker is not None else 0
        if left:
            logger.warning(
                "closing with %d unconfirmed messages; the broker will redeliver them", left
            )
        if self.lifecycle.stop is not None:
            self.lifecycle.stop.unconfirmed = left
        connection.close()

    # -- status ----------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        self.lifecycle.state = state
        self.lifecycle.node = self._where()
        self._write_status()

    def _write_status(self) -> None:
        in_flight = self._worker.in_flight if self._worker is not None else 0
        self._status.write(self.lifecycle, self.counters, in_flight)

    def _refresh_status(self) -> None:
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        self._write_status()
        connection.ioloop.call_later(self._settings.status_interval_seconds, self._refresh_status)

    def _log_stats(self) -> None:
        connection = self._connection
        if connection is None or not connection.is_open:
            return
        logger.info("relay totals: %s", self.counters.line())
        connection.ioloop.call_later(STATS_LOG_INTERVAL_SECONDS, self._log_stats)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested.is_set() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
