"""Inbox publishes awaiting the broker's verdict: a pure tracker, no pika.

The worker publishes to inboxes on a channel in confirm mode. The broker numbers a
channel's publishes 1, 2, 3 ... and later acks or nacks them, one at a time or `multiple`
(every number up to one). A mandatory publish that no queue takes is returned (basic.return)
just before its confirm, in publish order; the return names the message by its id, so two
publishes in flight with one id (a client reused its id) pair up with returns in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.relay.routing import Deliver, Verdict


@dataclass(eq=False)
class Pending:
    """An inbox publish, and the outbox message it came from (acked once it is settled)."""

    deliver: Deliver
    outbox_tag: int
    attempts: int = 1
    returned: bool = False
    # Copies (routing.Copy) of a confirmed publish: each is a Pending with its `parent`; the
    # parent is settled when `copies_left` reaches 0.
    parent: Pending | None = None
    copies_left: int = 0
    copied: bool = False


class ConfirmTracker:
    """`track()` each publish in publish order; `returned()` and `settle()` as the broker
    answers. One tracker per channel: sequence numbers start again on a new channel."""

    def __init__(self) -> None:
        self._seq = 0
        self._pending: dict[int, Pending] = {}  # insertion order is sequence order
        self._by_message_id: dict[str, list[int]] = {}  # one seq, unless an id was reused

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def message_ids(self) -> frozenset[str]:
        """The ids of the messages in flight."""
        return frozenset(self._by_message_id)

    def track(self, pending: Pending) -> int:
        """Record the publish just made; returns its sequence number."""
        self._seq += 1
        pending.returned = False
        self._pending[self._seq] = pending
        self._by_message_id.setdefault(pending.deliver.message_id, []).append(self._seq)
        return self._seq

    def returned(self, message_id: str | None) -> None:
        """basic.return: the oldest publish of that id not yet returned was unroutable."""
        for seq in self._by_message_id.get(message_id or "", ()):
            pending = self._pending[seq]
            if not pending.returned:
                pending.returned = True
                return

    def settle(
        self, delivery_tag: int, *, multiple: bool, ack: bool
    ) -> list[tuple[Pending, Verdict]]:
        """basic.ack / basic.nack: the publishes it covers, in order, with their verdict
        (CONFIRMED, or RETURNED for an ack of a returned publish, or NACKED)."""
        if multiple:
            done = []
            for seq in self._pending:
                if seq > delivery_tag:
                    break
                done.append(seq)
        else:
            done = [delivery_tag] if delivery_tag in self._pending else []
        settled = []
        for seq in done:
            pending = self._pending.pop(seq)
            self._forget(pending.deliver.message_id, seq)
            if pending.returned:
                verdict = Verdict.RETURNED
            else:
                verdict = Verdict.CONFIRMED if ack else Verdict.NACKED
            settled.append((pending, verdict))
        return settled

    def _forget(self, message_id: str, seq: int) -> None:
        seqs = self._by_message_id[message_id]
        seqs.remove(seq)
        if not seqs:
            del self._by_message_id[message_id]
