"""Sending through the relay: one message, a stream of them, receipts.

    sender = Sender(connection)
    answer = sender.send("bob", "hi")            # RelayAnswer(status="accepted", id=...)
    answers = sender.send_many(pairs)            # a window of messages in flight

Sending keeps each message until the relay has answered it (ledger.py). After a failover,
everything unanswered is published again with the same client `message_id` and send time,
so the relay gives it the same server id. That includes messages the broker had confirmed,
because the relay's answer to them went to the lost connection's reply-to and is gone; the
recipient may then get such a message twice, with one id, and shows it once. Without a lost
connection nothing is published twice: a message the broker nacked is published again
alone, on a new channel, while the old channel stays open for the confirms and answers of
the rest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator

import pika.exceptions
import pika.spec

from clients.library.connection import FOREVER, RECONNECT_WINDOW_SECONDS, Connection
from clients.library.errors import (
    BrokerUnreachable,
    LoginRefused,
    MessageRejected,
    PermissionUnchecked,
)
from clients.library.ledger import SendLedger
from clients.library.publisher import FLUSH_EVERY, Publisher
from protocol.messages import ReceiptStatus, RelayAnswer

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 1000
# A message source that made send_many() wait longer than this is not flat out.
SLOW_SOURCE_SECONDS = 0.0005


class Sender:
    """Sends on `connection` as its user; one thread at a time, like the connection.
    `interrupt`, when set, ends a wait to reconnect (a consumer's stop, say).
    `reconnect_window`: how long a lost connection is reconnected before giving up
    (connection.FOREVER: until `interrupt`); with a finite one, `send()` waits no longer
    than its `timeout` in all."""

    def __init__(
        self,
        connection: Connection,
        interrupt: threading.Event | None = None,
        reconnect_window: float = RECONNECT_WINDOW_SECONDS,
    ) -> None:
        self._connection = connection
        self._interrupt = interrupt
        self._window = reconnect_window
        self._deadline: float | None = None  # the end of the bounded send() in progress
        self._republished = 0  # times everything unanswered was published again, refusals
        self._ledger = SendLedger()
        self._publisher: Publisher | None = None
        # Sending channels given up after a nack: kept open (on the same connection) until
        # the relay has answered what they published, so those are not published again.
        self._retired: list[Publisher] = []
        connection.add_resume_hook(self._resume)

    # -- one message -----------------------------------------------------------------------

    def send(self, to: str, text: str, timeout: float = 5.0) -> RelayAnswer:
        """Send one message and wait for the relay's answer.

        Returns the `accepted` answer (server `id`, `sent_at`). Raises MessageRejected
        (`.reason`: unknown_recipient, invalid, inbox_full, rate_limited), NotConfirmed
        when the broker holds the message but the relay did not answer in time,
        BrokerUnreachable or BrokerRefused (each saying whether the message was sent).

        With a finite reconnect window the whole call, reconnecting included, ends within
        about `timeout` s. With FOREVER (a chat) a lost connection is waited out, the message
        published again under its client id, and the relay given `timeout` s from then.
        """
        bounded = self._window != FOREVER
        self._deadline = time.monotonic() + timeout if bounded else None
        try:
            with self._errors():
                publisher = self._publisher_now(timeout)  # BrokerUnreachable: nothing sent
            client_id = None
            try:
                with self._errors():
                    outgoing = self._ledger.new_send(to, text)
                    client_id = outgoing.client_id
                    with self._failover(timeout):  # a failover publishes it again
                        publisher.publish(outgoing)
                    answers = self._collect([client_id], timeout, forget_missing=False)
            except BrokerUnreachable as exc:
                if client_id is None:
                    raise
                if isinstance(exc, PermissionUnchecked):  # refused: it was not stored
                    self._ledger.forget(client_id)
                    raise
                raise self._ledger.unanswered_error(
                    client_id, timeout, self._connection.username, lost=exc
                ) from None
        finally:
            self._deadline = None
        assert client_id is not None
        answer = answers.get(client_id)
        if answer is None:
            raise self._ledger.unanswered_error(client_id, timeout, self._connection.username)
        return _raise_if_rejected(answer)

    def publish(self, to: str, text: str) -> str:
        """Publish without waiting; returns the client id to `collect()` the answer by."""
        with self._errors():
            client_id = self._publish_send(to, text, 5.0)
            self._flush(5.0)
            return client_id

    def collect(self, client_ids: Iterable[str], timeout: float = 5.0) -> dict[str, RelayAnswer]:
        """Wait up to `timeout` s for the relay's answers to what `publish()` sent; returns
        those that came (accepted and rejected alike), keyed by client id."""
        with self._errors():
            return self._collect(list(client_ids), timeout)

    def send_receipt(
        self,
        message_id: str,
        to: str,
        status: ReceiptStatus = "delivered",
        notify_sender: bool = True,
    ) -> None:
        """Tell `to` (the message's sender) that its message `message_id` was delivered/read
        (`notify_sender` False: a `read` only the reader's devices and the archive learn).
        Fire and forget: the broker confirms in the background; nothing is answered."""
        with self._errors():
            publisher = self._publisher_now(5.0)
            outgoing = self._ledger.new_receipt(message_id, to, status, notify_sender)
            with self._failover(5.0):
                publisher.publish(outgoing)

    # -- many messages ---------------------------------------------------------------------

    def send_many(
        self,
        messages: Iterable[tuple[str, str]],
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float = 30.0,
    ) -> list[RelayAnswer]:
        """Send (to, text) pairs with up to `window` unanswered at a time; the answers in
        order, rejected ones included (not raised). NotConfirmed when the relay stays silent
        for `timeout` s while answers are due."""
        with self._errors():
            order: list[str] = []
            answers: dict[str, RelayAnswer] = {}
            waiting: list[str] = []  # published, unanswered, in order
            pairs = iter(messages)
            # Publishes leave in batches only while `messages` has proven to yield them flat
            # out (FLUSH_EVERY fast pulls in a row). Until then, and as soon as it makes us
            # wait, what was published is written before asking it for more: a paced source
            # (a person typing) must not leave its last message queued in the client.
            fast_pulls, unwritten = 0, False
            while True:
                if unwritten and fast_pulls < FLUSH_EVERY:
                    self._flush(timeout)
                    unwritten = False
                asked = time.monotonic()
                pair = next(pairs, None)
                if pair is None:
                    break
                fast = time.monotonic() - asked <= SLOW_SOURCE_SECONDS
                fast_pulls = fast_pulls + 1 if fast else 0
                if len(waiting) >= window:
                    waiting = self._drain(waiting, answers, timeout, until=window // 2)
                client_id = self._publish_send(*pair, timeout)
                unwritten = True
                order.append(client_id)
                waiting.append(client_id)
            self._drain(waiting, answers, timeout, until=0)
        return [answers[client_id] for client_id in order]

    def _drain(
        self, waiting: list[str], answers: dict[str, RelayAnswer], timeout: float, *, until: int
    ) -> list[str]:
        """Pump events until at most `until` of `waiting` are unanswered."""
        deadline = time.monotonic() + timeout
        unanswered = dict.fromkeys(waiting)  # ordered; O(1) removal per answer
        while len(unanswered) > until:
            arrived = self._ledger.answered(unanswered)
            if arrived:
                got = self._ledger.take_answers(arrived)
                answers.update(got)
                for client_id in got:
                    del unanswered[client_id]
                deadline = time.monotonic() + timeout
                continue
            if time.monotonic() > deadline or (
                self._ledger.nacked() and not self._publish_nacked_again(list(unanswered))
            ):
                first = next(iter(self._ledger.nacked(unanswered)), None)
                first = first or next(iter(unanswered))
                raise self._ledger.unanswered_error(first, timeout, self._connection.username)
            generation = self._connection.generation
            self._pump(0.05, timeout)
            if self._connection.generation != generation:  # failed over: the relay needs time
                deadline = time.monotonic() + timeout
        return list(unanswered)

    # -- plumbing --------------------------------------------------------------------------

    def _publish_send(self, to: str, text: str, timeout: float) -> str:
        publisher = self._publisher_now(timeout)
        outgoing = self._ledger.new_send(to, text)
        with self._failover(timeout):  # a failover publishes it again, with the rest
            publisher.publish(outgoing)
        return outgoing.client_id

    def _collect(
        self, client_ids: list[str], timeout: float, *, forget_missing: bool = True
    ) -> dict[str, RelayAnswer]:
        """The answers that come within `timeout` s (of the bounded send's start, or of the
        last failover of an unbounded sender: the relay needs time for what was published
        again)."""
        deadline = self._deadline or time.monotonic() + timeout
        found: dict[str, RelayAnswer] = {}
        pending = list(client_ids)
        while True:
            found.update(self._ledger.take_answers(pending))
            pending = [c for c in pending if c not in found]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            if not self._publish_nacked_again(pending):
                break
            before = self._attempt()
            self._pump(min(left, 0.1), timeout)
            if self._deadline is None and self._attempt() != before:
                deadline = time.monotonic() + timeout
        for client_id in pending if forget_missing else ():
            self._ledger.forget(client_id)
        return found

    def _publish_nacked_again(self, client_ids: list[str]) -> bool:
        """Publish again what the broker nacked (it took no responsibility: a quorum shard
        may be between leaders), on a fresh channel, after a growing delay; False once one
        has been nacked too often. Only the nacked messages are published again: the rest
        were confirmed (or are still on their way) on the old channel, which stays open
        until the relay has answered them."""
        due = self._ledger.due_again(client_ids, time.monotonic())
        if due is None:
            return False
        if due:
            # A channel's view of a quorum queue can stay on a leader that is gone: publish
            # them on a new channel.
            logger.info("the broker refused %d messages; publishing them again", len(due))
            self._retire_publisher()
            with self._failover(5.0):
                self._connection.ensure_open()
                self._publisher = Publisher(self._connection, self._ledger, again=due)
        return True

    def _retire_publisher(self) -> None:
        """Keep the current sending channel for the answers it still awaits; close the
        retired ones that await none."""
        if self._publisher is not None:
            self._retired.append(self._publisher)
            self._publisher = None
        keep = []
        for publisher in self._retired:
            if publisher.awaits_anything():
                keep.append(publisher)
            else:
                publisher.close()
        self._retired = keep

    def _flush(self, timeout: float) -> None:
        """Write what is queued (publishes, acks) in one I/O turn, without waiting."""
        with self._failover(timeout):
            self._connection.pump(0)

    def _pump(self, time_limit: float, timeout: float) -> None:
        """Process I/O (confirms, answers) for up to `time_limit` s; fail over if the
        connection is lost, publishing everything unanswered again."""
        with self._failover(timeout):
            if self._publisher is None or not self._publisher.current_on(self._connection):
                self._ready_publisher()  # after an error, or a consumer's failover
            self._connection.pump(time_limit)
        if self._publisher is not None and self._publisher.closed_by_broker is not None:
            self._publish_refused(self._publisher.closed_by_broker)

    def _publish_refused(self, error: pika.exceptions.ChannelClosedByBroker) -> None:
        """The broker closed the sending channel. A 403 for a session the account API does
        not call gone means the broker could not ask the auth service (it restarts): wait
        and publish everything unanswered again on a new channel, for as long as this
        sender waits out outages (a bounded send: PermissionUnchecked, nothing was sent).
        Anything else is the broker's refusal, raised as it is."""
        self._publisher = None
        while True:
            if error.reply_code != pika.spec.ACCESS_REFUSED:
                raise error
            valid = self._connection.session_check()
            if valid is False:
                raise LoginRefused(
                    f"the server refused {self._connection.username!r}: the session has ended",
                    hint="log in again",
                )
            why = (
                "the server cannot check permissions right now (its account service does not"
                " answer); the message was not sent"
            )
            if self._deadline is not None and self._deadline - time.monotonic() < 1.0:
                raise PermissionUnchecked(why, hint="try again in a moment")
            self._connection.outage.failed(why.split(";")[0], 1.0)
            if self._interrupt is not None and self._interrupt.wait(1.0):
                raise BrokerUnreachable("stopped while waiting for the server")
            if self._interrupt is None:
                time.sleep(1.0)
            try:
                with self._failover(5.0):
                    self._ready_publisher()  # publishes everything unanswered again
                    self._connection.pump(0.2)
            except pika.exceptions.ChannelClosedByBroker as exc:
                error = exc
                continue
            if self._publisher is not None and self._publisher.closed_by_broker is not None:
                error = self._publisher.closed_by_broker
                self._publisher = None
                continue
            self._republished += 1
            self._connection.outage.recovered()
            return

    def _publisher_now(self, timeout: float) -> Publisher:
        """The sending channel; a new one first publishes again what is unanswered."""
        with self._failover(timeout):
            return self._ready_publisher()
        return self._ready_publisher()  # failed over just now

    def _ready_publisher(self) -> Publisher:
        # One round over the nodes, unless this sender waits out outages (FOREVER) or a
        # bounded send has time left to wait.
        window = None
        if self._deadline is not None or self._window == FOREVER:
            window = self._reconnect_window()
        self._connection.ensure_open(window, self._interrupt)
        # Channels of a connection that was lost since went with it.
        self._retired = [p for p in self._retired if p.current_on(self._connection)]
        if self._publisher is None or not self._publisher.current_on(self._connection):
            self._publisher = Publisher(self._connection, self._ledger)
        return self._publisher

    def _resume(self) -> None:
        """After a reconnect: a new sending channel at once if anything awaits an answer
        (it publishes that again), so the answers come even if no send follows."""
        self._publisher, self._retired = None, []
        if self._ledger.unsettled():
            self._ready_publisher()

    def _attempt(self) -> tuple[int, int]:
        """Changes whenever everything unanswered was published again (a failover, a
        refused channel): the relay's answers are due anew."""
        return (self._connection.generation, self._republished)

    def keep_alive(self) -> None:
        """Between sends: notice a lost connection and reconnect now (for up to the
        reconnect window), so the next send finds it open."""
        with self._errors():
            self._connection.ensure_open(self._reconnect_window(), self._interrupt)

    def _reconnect_window(self) -> float:
        """How long a lost connection may be reconnected now: the sender's window, or what
        is left of the bounded send in progress."""
        if self._deadline is None:
            return self._window
        return max(0.0, min(self._window, self._deadline - time.monotonic()))

    @contextlib.contextmanager
    def _failover(self, timeout: float) -> Iterator[None]:
        window = (
            self._reconnect_window() if self._deadline is not None else max(timeout, self._window)
        )
        with self._connection.failover(window, self._interrupt):
            yield

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        with self._connection.translated_errors():
            try:
                yield
            except pika.exceptions.AMQPError:
                self._publisher = None  # its channel may be gone: a new one next time
                raise


def _raise_if_rejected(answer: RelayAnswer) -> RelayAnswer:
    if answer.status == "accepted":
        return answer
    reason = answer.reason or "invalid"
    if reason == "rate_limited":
        raise MessageRejected(f"slow down: {answer.detail or 'too many messages'}", reason)
    raise MessageRejected(answer.detail or f"the relay rejected the message ({reason})", reason)
