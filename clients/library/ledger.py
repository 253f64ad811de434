"""What was sent and not settled yet: a pure ledger, no pika, no clock of its own.

A send stays in the ledger until the relay has answered it (or the caller stopped
waiting), a receipt until the broker confirmed it. That is what makes failover safe: after
a reconnect, everything unsettled is published again with the same client id and send
time, so the relay gives it the same server id (protocol.ids.stable_id). Bodies are built
from the protocol's models; whether they are valid is the relay's call, answered as
`rejected`/`invalid`, so the client never holds a rule of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from broker.backoff import backoff_delay
from clients.library.errors import (
    BrokerRefused,
    DeliveryUncertain,
    MessageRejected,
    MessengerError,
    NotConfirmed,
)
from protocol.ids import stable_id
from protocol.messages import (
    MAX_BODY_BYTES,
    ReceiptRequest,
    ReceiptStatus,
    RelayAnswer,
    SendRequest,
    encode,
)
from protocol.topology import REPLY_TO, TYPE_RECEIPT, TYPE_SEND

# A nacked outbox publish (a quorum shard between leaders nacks for a few seconds) is
# published again after 0.5, 1, 2, 4, 5, 5 ... s, this many times at most.
MAX_NACK_RETRIES = 8
NACK_RETRY_MAX_DELAY_SECONDS = 5.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Outgoing:
    """One message to the outbox, kept until settled so a failover can publish it again."""

    client_id: str
    body: bytes
    kind: str
    reply_to: str | None  # None: a receipt, which the relay does not answer
    sent_ms: int = field(default_factory=_now_ms)
    nacks: int = 0
    retry_at: float | None = None  # when to publish a nacked message again (monotonic)


class SendLedger:
    def __init__(self) -> None:
        self._outgoing: dict[str, Outgoing] = {}  # in publish order
        self._answers: dict[str, RelayAnswer] = {}
        self._confirmed: set[str] = set()
        self._nacked: set[str] = set()

    # -- new entries -----------------------------------------------------------------------

    def new_send(self, to: str, text: str) -> Outgoing:
        """Raises MessageRejected (`invalid`) for a body the relay would not read."""
        body = encode(SendRequest.model_construct(to=to, text=text))
        if len(body) > MAX_BODY_BYTES:
            raise MessageRejected(
                f"the message is too long ({len(body)} bytes; at most {MAX_BODY_BYTES})", "invalid"
            )
        return self._add(Outgoing(str(uuid.uuid4()), body, TYPE_SEND, REPLY_TO))

    def new_receipt(
        self, message_id: str, to: str, status: ReceiptStatus, notify_sender: bool = True
    ) -> Outgoing:
        body = encode(
            ReceiptRequest.model_construct(
                message_id=message_id, to=to, status=status, notify_sender=notify_sender
            )
        )
        return self._add(Outgoing(str(uuid.uuid4()), body, TYPE_RECEIPT, None))

    def _add(self, outgoing: Outgoing) -> Outgoing:
        self._outgoing[outgoing.client_id] = outgoing
        return outgoing

    # -- what the broker and the relay said ------------------------------------------------

    def awaits_answer(self, client_id: str | None) -> bool:
        outgoing = self._outgoing.get(client_id or "")
        return outgoing is not None and outgoing.reply_to is not None

    def on_confirm(self, client_id: str, ack: bool) -> bool:
        """The broker's confirm; False for a receipt the broker refused (it is dropped)."""
        outgoing = self._outgoing.get(client_id)
        if outgoing is None:
            return True
        if outgoing.reply_to is None:  # a receipt: done either way
            del self._outgoing[client_id]
            return ack
        (self._confirmed if ack else self._nacked).add(client_id)
        return True

    def on_answer(self, client_id: str, answer: RelayAnswer) -> None:
        if self.awaits_answer(client_id):
            self._answers[client_id] = answer

    def answered(self, client_ids: Iterable[str]) -> list[str]:
        """Those of `client_ids` whose answer has come (not taken yet), in their order."""
        return [c for c in client_ids if c in self._answers]

    def take_answers(self, client_ids: Iterable[str]) -> dict[str, RelayAnswer]:
        """The answers that came for `client_ids`; those are settled."""
        got = {}
        for client_id in client_ids:
            answer = self._answers.pop(client_id, None)
            if answer is not None:
                got[client_id] = answer
                self.forget(client_id)
        return got

    def forget(self, client_id: str) -> None:
        """No longer awaited: a late answer is dropped."""
        self._outgoing.pop(client_id, None)
        self._confirmed.discard(client_id)
        self._nacked.discard(client_id)

    # -- publishing again ------------------------------------------------------------------

    def unsettled(self) -> bool:
        return bool(self._outgoing)

    def nacked(self, client_ids: Iterable[str] | None = None) -> list[str]:
        """The nacked ones among `client_ids` (all when None), in order."""
        if client_ids is None:
            return [c for c in self._outgoing if c in self._nacked]
        return [c for c in client_ids if c in self._nacked]

    def due_again(self, client_ids: Iterable[str], now: float) -> list[Outgoing] | None:
        """The nacked ones among `client_ids` whose backoff has passed at `now` (monotonic),
        marked as being published again; None once one was nacked MAX_NACK_RETRIES times."""
        due = []
        for client_id in self.nacked(client_ids):
            outgoing = self._outgoing[client_id]
            if outgoing.nacks >= MAX_NACK_RETRIES:
                return None
            if outgoing.retry_at is None:
                delay = backoff_delay(outgoing.nacks + 1, NACK_RETRY_MAX_DELAY_SECONDS)
                outgoing.retry_at = now + delay
            if now >= outgoing.retry_at:
                outgoing.nacks += 1
                outgoing.retry_at = None
                due.append(outgoing)
        self.publishing_again(due)
        return due

    def publishing_again(self, again: list[Outgoing]) -> None:
        """These (nacked) messages are being published again on a new channel."""
        for outgoing in again:
            self._nacked.discard(outgoing.client_id)
            self._confirmed.discard(outgoing.client_id)

    def to_publish_again(self) -> list[Outgoing]:
        """After a failover: everything unsettled, in order, as if never published."""
        self._confirmed.clear()
        self._nacked.clear()
        return list(self._outgoing.values())

    def is_confirmed(self, client_id: str) -> bool:
        return client_id in self._confirmed

    # -- giving up -------------------------------------------------------------------------

    def unanswered_error(
        self, client_id: str, timeout: float, sender: str, lost: BaseException | None = None
    ) -> MessengerError:
        """Why `client_id` has no answer after `timeout` s (or after the connection was
        `lost` for good), as the error to raise, saying what is true of the message: the
        broker holds it (it confirmed it), it was not accepted (nacked), or nobody can know
        (published, unconfirmed): never an invitation to send it again. Forgets it."""
        nacked, confirmed = client_id in self._nacked, client_id in self._confirmed
        outgoing = self._outgoing.get(client_id)
        self.forget(client_id)
        if nacked:
            return BrokerRefused("the broker did not accept the message; it was not sent")
        if confirmed:
            return NotConfirmed(
                f"the broker holds the message; the relay has not answered within {timeout:g} s",
                client_id,
                stable_id(sender, client_id, outgoing.sent_ms) if outgoing else None,
            )
        why = (
            f"the connection to the broker was lost ({lost}) before it confirmed the message"
            if lost is not None
            else f"the broker has not confirmed the message within {timeout:g} s"
        )
        return DeliveryUncertain(
            f"{why}; if it had stored it, it will be delivered",
            hint="sending it again could deliver it twice; ask the recipient first",
        )
