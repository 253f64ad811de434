"""A refused inbox publish: why it was refused, before the sender is told anything.

A returned or nacked inbox publish is checked with a passive declare of the inbox, on a
short-lived channel of its own (a 404 closes the channel it runs on): it tells "no such
user" from "its node is down" (`judge_refusal`). A message for an inbox that exists but is
unavailable stays unacked in the outbox and is published again after a growing delay.
Holding it keeps the promise that nothing confirmed is lost, and delivers it the moment the
inbox is back; the sender, who gets no answer meanwhile, hears NotConfirmed ("queued, will
be delivered"). The cost: held messages occupy the shard's prefetch window, so if more than
`prefetch` of one shard's messages wait for a dead node's classic inboxes, that shard stalls
until the node returns. Quorum inboxes never get there (they stay available while a
majority of nodes runs).

The decisions are pure functions; `RefusedPublishes` is the plumbing of one connection.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika.channel
import pika.frame
from pika.adapters.select_connection import SelectConnection

from broker.backoff import backoff_delay
from broker.errors import queue_missing, reply_code
from protocol.topology import inbox_queue, user_anchor_queue
from services.relay.confirms import Pending
from services.relay.routing import Verdict
from services.relay.status import Counters

logger = logging.getLogger(__name__)

# A passive declare that gets no answer in this time counts as "inbox unavailable".
PROBE_TIMEOUT_SECONDS = 5.0


class InboxState(enum.Enum):
    """What a passive declare of the recipient's inbox says, after a return or a nack."""

    PRESENT = "present"  # declare-ok: the queue exists and its node answers
    MISSING = "missing"  # 404 "no queue": nobody of that name signed up
    UNAVAILABLE = "unavailable"  # 404 for a queue whose node is down, or no answer


@dataclass(frozen=True)
class InboxCheck:
    state: InboxState
    message_count: int = 0


def check_from_declare_ok(message_count: int) -> InboxCheck:
    return InboxCheck(InboxState.PRESENT, message_count)


def check_from_close(reply_code: int | None, reply_text: str) -> InboxCheck:
    """The passive declare closed its channel: 404 names a missing queue, unless the queue
    exists on a node that is down (broker.errors.queue_missing). Anything else (timeout,
    lost connection) is unavailable."""
    if queue_missing(reply_code, reply_text):
        return InboxCheck(InboxState.MISSING)
    return InboxCheck(InboxState.UNAVAILABLE)


def judge_refusal(verdict: Verdict, check: InboxCheck) -> Verdict:
    """What a returned or nacked inbox publish means, given the state of the inbox.

    On one node a return means "no such user" and a nack "inbox full". On a cluster both
    also happen while the inbox's node is down: a classic inbox on a dead node is unroutable
    (returned), an inbox that cannot reach its node or a quorum majority nacks. Telling the
    sender `unknown_recipient` or `inbox_full` then would be wrong, and the message would
    be dropped. So a refusal is checked against a passive declare of the inbox:

    - the queue does not exist -> RETURNED (unknown recipient), whatever the broker said;
    - its node is down or the check got no answer -> UNAVAILABLE: the relay holds the
      outbox message (unacked, so it is never lost) and publishes it again later;
    - it exists and answers: a nack with messages waiting -> NACKED (full). A nack on an
      empty queue cannot be the length limit (a quorum queue without a leader reports 0),
      and a return from a queue that answers now means its node just came back: both are
      UNAVAILABLE, retried.
    """
    if check.state is InboxState.MISSING:
        return Verdict.RETURNED
    if check.state is InboxState.UNAVAILABLE:
        return Verdict.UNAVAILABLE
    if verdict is Verdict.NACKED and check.message_count > 0:
        return Verdict.NACKED
    return Verdict.UNAVAILABLE


class RefusedPublishes:
    """The refused publishes of one connection: each is checked, then settled (answered and
    acked by `settle`) or held and published again (by `republish`) after a backoff.
    Checks of one inbox that overlap share one declare."""

    def __init__(
        self,
        connection: SelectConnection,
        *,
        republish: Callable[[Pending], None],
        settle: Callable[[Pending, Verdict], None],
        usable: Callable[[], bool],
        retry_max_delay: float,
        counters: Counters,
    ) -> None:
        self._connection = connection
        self._republish = republish
        self._settle = settle
        self._usable = usable  # False once the channel went: the broker redelivers
        self._retry_max_delay = retry_max_delay
        self._counters = counters
        self._held: set[Pending] = set()  # waiting for their check or their retry
        # queue -> what to do with the result of the check in progress for that queue
        self._probes: dict[str, list[Callable[[InboxCheck], None]]] = {}
        self._retrying = True

    def __len__(self) -> int:
        return len(self._held)

    def stop_retrying(self) -> None:
        """Shutting down: held messages stay unacked, for the broker to deliver again."""
        self._retrying = False

    def refused(self, pending: Pending, verdict: Verdict) -> None:
        """A RETURNED or NACKED publish: check the inbox, then settle it or hold it."""
        self._held.add(pending)

        def judged(check: InboxCheck) -> None:
            if pending not in self._held or not self._usable():
                return  # the connection went: the broker redelivers the outbox message
            if verdict is Verdict.NACKED and check.state is InboxState.MISSING:
                # No legacy inbox: the nack came from a device queue (drop-head, never full),
                # so its node or leader is away.
                check = InboxCheck(InboxState.UNAVAILABLE)
            outcome = judge_refusal(verdict, check)
            if outcome is Verdict.UNAVAILABLE:
                self._hold(pending, check)
            else:
                self._held.discard(pending)
                self._settle(pending, outcome)

        # A return: does the user exist (the anchor)? A nack: is the length-limited legacy
        # inbox full (device queues drop their oldest instead of refusing)?
        recipient = pending.deliver.recipient
        queue = (
            inbox_queue(recipient) if verdict is Verdict.NACKED else user_anchor_queue(recipient)
        )
        self._probe(queue, judged)

    def _hold(self, pending: Pending, check: InboxCheck) -> None:
        self._counters.held += 1
        delay = backoff_delay(pending.attempts, self._retry_max_delay)
        level = logging.WARNING if pending.attempts == 1 else logging.DEBUG
        logger.log(
            level,
            "the inbox of %r is %s: holding message %s, retrying in %.1f s (attempt %d)",
            pending.deliver.recipient,
            "not taking messages" if check.state is InboxState.PRESENT else "unavailable",
            pending.deliver.message_id,
            delay,
            pending.attempts + 1,
        )
        self._connection.ioloop.call_later(delay, lambda: self._retry(pending))

    def _retry(self, pending: Pending) -> None:
        if pending not in self._held or not self._usable() or not self._retrying:
            return
        self._held.discard(pending)
        pending.attempts += 1
        self._republish(pending)

    def _probe(self, queue: str, done: Callable[[InboxCheck], None]) -> None:
        """Passive-declare `queue` on a channel of its own, then `done` (within
        PROBE_TIMEOUT_SECONDS)."""
        waiting = self._probes.get(queue)
        if waiting is not None:
            waiting.append(done)
            return
        waiters = self._probes[queue] = [done]

        def finish(check: InboxCheck) -> None:
            if self._probes.get(queue) is waiters:  # the first result wins, once
                del self._probes[queue]
                for callback in waiters:
                    callback(check)

        def on_open(channel: pika.channel.Channel) -> None:
            def on_ok(frame: pika.frame.Method) -> None:
                finish(check_from_declare_ok(frame.method.message_count))
                if channel.is_open:
                    channel.close()

            def on_closed(_channel: Any, reason: BaseException) -> None:
                finish(
                    check_from_close(reply_code(reason), str(getattr(reason, "reply_text", reason)))
                )

            channel.add_on_close_callback(on_closed)
            channel.queue_declare(queue, passive=True, callback=on_ok)

        self._connection.channel(on_open_callback=on_open)
        self._connection.ioloop.call_later(
            PROBE_TIMEOUT_SECONDS, lambda: finish(InboxCheck(InboxState.UNAVAILABLE))
        )
