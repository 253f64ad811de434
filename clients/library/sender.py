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

from clients.library.connection import RECONNECT_WINDOW_SECONDS, Connection
from clients.library.errors import MessageRejected
from clients.library.ledger import SendLedger
from clients.library.publisher import FLUSH_EVERY, Publisher
from protocol.messages import ReceiptStatus, RelayAnswer

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 1000
# A message source that made send_many() wait longer than this is not flat out.
SLOW_SOURCE_SECONDS = 0.0005


class Sender:
    """Sends on `connection` as its user; one thread at a time, like the connection.
    `interrupt`, when set, ends a wait to reconnect (a consumer's stop, say)."""

    def __init__(self, connection: Connection, interrupt: threading.Event | None = None) -> None:
        self._connection = connection
        self._interrupt = interrupt
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
        when the broker holds the message but the relay did not answer in time, BrokerUnreachable or
        BrokerRefused.
        """
        with self._errors():
            client_id = self._publish_send(to, text, timeout)
            answers = self._collect([client_id], timeout, forget_missing=False)
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

    def send_receipt(self, message_id: str, to: str, status: ReceiptStatus = "delivered") -> None:
        """Tell `to` (the message's sender) that its message `message_id` was delivered/read.
        Fire and forget: the broker confirms in the background; nothing is answered."""
        with self._errors():
            publisher = self._publisher_now(5.0)
            outgoing = self._ledger.new_receipt(message_id, to, status)
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
        deadline = time.monotonic() + timeout
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
            self._pump(min(left, 0.1), timeout)
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

    def _publisher_now(self, timeout: float) -> Publisher:
        """The sending channel; a new one first publishes again what is unanswered."""
        with self._failover(timeout):
            return self._ready_publisher()
        return self._ready_publisher()  # failed over just now

    def _ready_publisher(self) -> Publisher:
        self._connection.ensure_open()
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

    @contextlib.contextmanager
    def _failover(self, timeout: float) -> Iterator[None]:
        with self._connection.failover(max(timeout, RECONNECT_WINDOW_SECONDS), self._interrupt):
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
