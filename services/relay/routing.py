"""The relay's decisions, free of pika: what to do with one outbox message.

`route()` turns an `Incoming` (the body and the AMQP properties that matter) into one of
three outcomes, and `answer_for()` turns the broker's verdict on an inbox publish into the
answer the sender gets. The worker (worker.py) only decodes, calls these, publishes, acks.
Checks that come before routing (a sender's rate) belong beside these, as pure functions
the worker calls.

Copies (`Deliver.copies`): once the main publish is confirmed, the worker publishes each
copy and acks the outbox message only when all are confirmed too. A message goes to the
recipient (key = recipient), then as a carbon to the sender's own devices (key =
carbon_key(sender), unless it is a note to self) and to the archive. A receipt goes to the
original sender (unless `notify_sender` is false), a `read` one also to the reader's own
devices, and every receipt to the archive.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from broker.reply_to import answerable
from protocol.accounts import is_valid_username
from protocol.ids import stable_id
from protocol.messages import (
    MAX_BODY_BYTES,
    NOTIFY_SENDER_HEADER,
    DeliveredMessage,
    ReceiptNotice,
    ReceiptRequest,
    RejectReason,
    RelayAnswer,
    SendRequest,
    encode,
    is_valid_client_id,
)
from protocol.topology import (
    ARCHIVE_EXCHANGE,
    CONTENT_TYPE,
    INBOX_EXCHANGE,
    TYPE_MESSAGE,
    TYPE_RECEIPT,
    TYPE_RECEIPT_NOTICE,
    TYPE_SEND,
    carbon_key,
)

# The client's send time (SENT_MS_HEADER) is believed within this window around the relay's
# clock, and only then makes the server id (ids.stable_id): outside it, the message gets a
# fresh id stamped with the relay's clock (see _server_id for why not a clamped time).
MAX_CLOCK_AHEAD_MS = 5 * 60 * 1000
MAX_CLOCK_BEHIND_MS = 24 * 60 * 60 * 1000


class RelayError(Exception):
    """Why an outbox message is not delivered."""


class Unparseable(RelayError):
    """Cannot be read at all: dead-lettered, never answered."""


class InvalidMessage(RelayError):
    """Read, but breaks the rules: answered `rejected`/`invalid` with what was wrong."""


@dataclass(frozen=True)
class Incoming:
    """One outbox delivery as the relay sees it."""

    body: bytes
    user_id: str | None
    content_type: str | None
    type: str | None
    message_id: str | None
    reply_to: str | None
    client_ms: int | None = None  # the SENT_MS_HEADER, when the client sent one
    # why the delivery could not be decoded (properties pika could not read, or bytes
    # where text belongs): such a message is dead-lettered whatever else it holds
    problem: str | None = None


@dataclass(frozen=True)
class Answer:
    """A RelayAnswer for the sender's direct reply-to."""

    reply_to: str
    body: RelayAnswer


@dataclass(frozen=True)
class Copy:
    """One more publish of the same body, once the main one is confirmed."""

    exchange: str
    routing_key: str
    headers: tuple[tuple[str, int], ...] = ()

    @property
    def to_archive(self) -> bool:
        return self.exchange == ARCHIVE_EXCHANGE


@dataclass(frozen=True)
class Deliver:
    """Publish `body` to `recipient` on `exchange` (mandatory, persistent, confirmed), then
    its `copies`, then answer."""

    recipient: str
    message_id: str
    type: str
    body: bytes
    client_id: str | None
    reply_to: str | None
    sent_at: datetime
    exchange: str = INBOX_EXCHANGE
    copies: tuple[Copy, ...] = ()
    headers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Reply:
    """Nothing to publish to an inbox: answer (if the sender can be answered) and ack."""

    answer: Answer | None
    rate_limited: bool = False  # refused by a rate limit (answered or not)


@dataclass(frozen=True)
class DeadLetter:
    """Reject without requeue, so the broker moves it to relay.dead."""

    reason: str


Outcome = Deliver | Reply | DeadLetter


class Verdict(enum.Enum):
    """What the broker said about an inbox publish (after inbox_checks.judge_refusal for a
    refusal)."""

    CONFIRMED = "confirmed"  # basic.ack, not returned: in the recipient's inbox
    RETURNED = "returned"  # basic.return: no inbox bound for that name, no such user
    NACKED = "nacked"  # basic.nack: the inbox's length limit rejected it
    UNAVAILABLE = "unavailable"  # the inbox exists but cannot take it now: hold, retry


def route(incoming: Incoming, *, now: datetime, new_id: str) -> Outcome:
    """Decide what one outbox message becomes. Never raises: whatever it did not foresee is
    dead-lettered (tests/hostile/ holds it to that over arbitrary input).

    `new_id` is a fresh time-ordered id, used when the client gave no id and send time to
    derive a stable one from (see ids.stable_id).
    """
    try:
        if incoming.problem is not None:
            raise Unparseable(incoming.problem)
        sender = _sender(incoming)
        kind = incoming.type or TYPE_SEND
        if kind == TYPE_SEND:
            return _send(incoming, sender, now, new_id)
        if kind == TYPE_RECEIPT:
            return _receipt(incoming, sender, now, new_id)
        raise Unparseable(f"unknown message type {kind!r}")
    except Unparseable as exc:
        return DeadLetter(str(exc))
    except InvalidMessage as exc:
        return Reply(_answer(incoming, "rejected", reason="invalid", detail=str(exc)))
    except Exception as exc:  # a bug, or an input nobody thought of: never a crash loop
        return DeadLetter(f"the relay cannot handle it ({type(exc).__name__}: {exc})"[:300])


def refuse(incoming: Incoming, reason: RejectReason, detail: str) -> Reply:
    """Answer `rejected` with `reason` (when the sender can be answered), relay nothing."""
    answer = _answer(incoming, "rejected", reason=reason, detail=detail)
    return Reply(answer, rate_limited=reason == "rate_limited")


def answer_for(deliver: Deliver, verdict: Verdict) -> Answer | None:
    """The sender's answer once the broker has judged the inbox publish; none while the
    message is held for a retry (UNAVAILABLE)."""
    if deliver.reply_to is None or verdict is Verdict.UNAVAILABLE:
        return None
    if verdict is Verdict.CONFIRMED:
        body = RelayAnswer(
            status="accepted",
            client_id=deliver.client_id,
            id=deliver.message_id,
            sent_at=deliver.sent_at,
        )
    elif verdict is Verdict.RETURNED:
        body = RelayAnswer(
            status="rejected",
            client_id=deliver.client_id,
            reason="unknown_recipient",
            detail=f"there is no user named {deliver.recipient!r}",
        )
    else:
        body = RelayAnswer(
            status="rejected",
            client_id=deliver.client_id,
            reason="inbox_full",
            detail=f"the inbox of {deliver.recipient!r} is full; try again later",
        )
    return Answer(deliver.reply_to, body)


# -- internals ----------------------------------------------------------------------------


def _sender(incoming: Incoming) -> str:
    if len(incoming.body) > MAX_BODY_BYTES:
        raise Unparseable(f"body of {len(incoming.body)} bytes exceeds {MAX_BODY_BYTES}")
    if incoming.content_type != CONTENT_TYPE:
        raise Unparseable(f"content type {incoming.content_type!r} is not {CONTENT_TYPE}")
    if not incoming.user_id:
        raise Unparseable("no user_id: the sender is unknown")
    if not is_valid_username(incoming.user_id):
        raise Unparseable(f"user_id {incoming.user_id!r} is not a user")
    return incoming.user_id


def _parse(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or an integer of more than 4300 digits;
        # RecursionError: arrays or objects nested thousands deep
        raise Unparseable(f"body is not JSON: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(data, dict):
        raise InvalidMessage("body must be a JSON object")
    return data


def _send(incoming: Incoming, sender: str, now: datetime, new_id: str) -> Deliver:
    try:
        request = SendRequest.model_validate(_parse(incoming.body))
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc)) from None
    client_id = _client_id(incoming)
    new_id = _server_id(incoming, sender, client_id, now, new_id)
    message = DeliveredMessage(
        id=new_id,
        client_id=client_id,
        sender=sender,
        to=request.to,
        text=request.text,
        sent_at=now,
    )
    copies = [Copy(ARCHIVE_EXCHANGE, "")]
    if sender != request.to:  # a note to self is delivered once
        copies.insert(0, Copy(INBOX_EXCHANGE, carbon_key(sender)))
    return Deliver(
        recipient=request.to,
        message_id=new_id,
        type=TYPE_MESSAGE,
        body=encode(message),
        client_id=client_id,
        reply_to=_reply_to(incoming),
        sent_at=now,
        copies=tuple(copies),
    )


def _receipt(incoming: Incoming, sender: str, now: datetime, new_id: str) -> Outcome:
    try:
        request = ReceiptRequest.model_validate(_parse(incoming.body))
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc)) from None
    new_id = _server_id(incoming, sender, _client_id(incoming), now, new_id)
    notice = ReceiptNotice(
        message_id=request.message_id, reader=sender, status=request.status, at=now
    )
    archive = Copy(ARCHIVE_EXCHANGE, "", ((NOTIFY_SENDER_HEADER, int(request.notify_sender)),))
    own_devices = Copy(INBOX_EXCHANGE, carbon_key(sender))
    copies = [own_devices] if request.status == "read" else []
    if request.notify_sender:
        exchange, recipient = INBOX_EXCHANGE, request.to
        copies.append(archive)
    else:  # the original sender hears nothing; the archive copy is the main publish
        exchange, recipient = archive.exchange, archive.routing_key
    # Receipts are not answered: the recipient's client sends them and moves on.
    return Deliver(
        recipient=recipient,
        message_id=new_id,
        type=TYPE_RECEIPT_NOTICE,
        body=encode(notice),
        client_id=None,
        reply_to=None,
        sent_at=now,
        exchange=exchange,
        copies=tuple(copies),
        headers=() if request.notify_sender else archive.headers,
    )


def _client_id(incoming: Incoming) -> str | None:
    """The sender's message id when it is a valid client id (protocol.messages), else None:
    free text never reaches the recipient."""
    if not is_valid_client_id(incoming.message_id):
        return None
    return incoming.message_id


def _server_id(
    incoming: Incoming, sender: str, client_id: str | None, now: datetime, fresh_id: str
) -> str:
    """Stable across redeliveries when the client gave an id and a believable send time.

    The time in an id orders a conversation, so a client must not choose it freely
    (`messenger-sent-ms: 1` made an id of 1970). Clamping the client's time into a window
    around the relay's clock would not do: a message relayed twice (its relay died before
    the ack) is clamped against two different clocks and gets two ids, and its recipient
    sees it twice. So the client's time is either believed as it is, when it lies within
    [relay now - 24 h, relay now + 5 min], and then gives the stable id; or not at all, and
    the message gets a fresh id on the relay's clock. A redelivered message keeps its id
    unless its client's clock was off by more than the window (or it waited in the outbox
    longer than 24 h) and a relay crashed while relaying it.
    """
    client_ms = incoming.client_ms
    if client_id is None or client_ms is None or isinstance(client_ms, bool):
        return fresh_id
    now_ms = now.timestamp() * 1000
    if not now_ms - MAX_CLOCK_BEHIND_MS <= client_ms <= now_ms + MAX_CLOCK_AHEAD_MS:
        return fresh_id
    return stable_id(sender, client_id, client_ms)


def _reply_to(incoming: Incoming) -> str | None:
    return incoming.reply_to if answerable(incoming.reply_to) else None


def _answer(incoming: Incoming, status: str, *, reason: RejectReason, detail: str) -> Answer | None:
    reply_to = _reply_to(incoming)
    if reply_to is None:
        return None
    body = RelayAnswer.model_validate(
        {"status": status, "client_id": _client_id(incoming), "reason": reason, "detail": detail}
    )
    return Answer(reply_to, body)


def _describe(exc: ValidationError) -> str:
    """`to: username must be lowercase; text: text must not be empty`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
