"""The relay's decisions, free of pika: what to do with one outbox message.

`route()` turns an `Incoming` (the body and the AMQP properties that matter) into one of
three outcomes, and `answer_for()` turns the broker's verdict on an inbox publish into the
answer the sender gets. The worker (worker.py) only decodes, calls these, publishes, acks.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from protocol.accounts import is_valid_username
from protocol.ids import stable_id
from protocol.messages import (
    MAX_BODY_BYTES,
    DeliveredMessage,
    ReceiptNotice,
    ReceiptRequest,
    RejectReason,
    RelayAnswer,
    SendRequest,
    encode,
)
from protocol.topology import (
    CONTENT_TYPE,
    REPLY_TO,
    TYPE_MESSAGE,
    TYPE_RECEIPT,
    TYPE_RECEIPT_NOTICE,
    TYPE_SEND,
)

MAX_CLIENT_ID_CHARS = 128
# A client clock further ahead than this is not believed: its message gets a fresh id.
MAX_CLOCK_AHEAD_MS = 5 * 60 * 1000


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


@dataclass(frozen=True)
class Answer:
    """A RelayAnswer for the sender's direct reply-to."""

    reply_to: str
    body: RelayAnswer


@dataclass(frozen=True)
class Deliver:
    """Publish `body` to `recipient`'s inbox (mandatory, persistent, confirmed), then answer."""

    recipient: str
    message_id: str
    type: str
    body: bytes
    client_id: str | None
    reply_to: str | None
    sent_at: datetime


@dataclass(frozen=True)
class Reply:
    """Nothing to publish to an inbox: answer (if the sender can be answered) and ack."""

    answer: Answer | None


@dataclass(frozen=True)
class DeadLetter:
    """Reject without requeue, so the broker moves it to relay.dead."""

    reason: str


Outcome = Deliver | Reply | DeadLetter


class Verdict(enum.Enum):
    """What the broker said about an inbox publish (after `judge_refusal` for a refusal)."""

    CONFIRMED = "confirmed"  # basic.ack, not returned: in the recipient's inbox
    RETURNED = "returned"  # basic.return: no inbox bound for that name, no such user
    NACKED = "nacked"  # basic.nack: the inbox's length limit rejected it
    UNAVAILABLE = "unavailable"  # the inbox exists but cannot take it now: hold, retry


class InboxState(enum.Enum):
    """What a passive declare of the recipient's inbox says, after a return or a nack."""

    PRESENT = "present"  # declare-ok: the queue exists and its node answers
    MISSING = "missing"  # 404 "no queue": nobody of that name signed up
    UNAVAILABLE = "unavailable"  # 404 "home node ... down or inaccessible", or no answer


@dataclass(frozen=True)
class InboxCheck:
    state: InboxState
    message_count: int = 0


def check_from_declare_ok(message_count: int) -> InboxCheck:
    return InboxCheck(InboxState.PRESENT, message_count)


def check_from_close(reply_code: int | None, reply_text: str) -> InboxCheck:
    """The passive declare closed its channel: 404 names a missing queue, unless the queue
    exists on a node that is down (RabbitMQ: "home node 'x' of durable queue 'y' in vhost
    'z' is down or inaccessible"). Anything else (timeout, lost connection) is unavailable."""
    if reply_code == 404 and "down or inaccessible" not in reply_text:
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


def retry_delay(attempt: int, maximum: float, first: float = 0.5) -> float:
    """Seconds before publishing a held message again: 0.5, 1, 2 ... capped (attempt >= 1)."""
    return float(min(maximum, first * 2.0 ** max(0, attempt - 1)))


def route(incoming: Incoming, *, now: datetime, new_id: str) -> Outcome:
    """Decide what one outbox message becomes. Never raises.

    `new_id` is a fresh time-ordered id, used when the client gave no id and send time to
    derive a stable one from (see ids.stable_id).
    """
    try:
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Unparseable(f"body is not JSON: {exc}") from None
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
    return Deliver(
        recipient=request.to,
        message_id=new_id,
        type=TYPE_MESSAGE,
        body=encode(message),
        client_id=client_id,
        reply_to=_reply_to(incoming),
        sent_at=now,
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
    # Receipts are not answered: the recipient's client sends them and moves on.
    return Deliver(
        recipient=request.to,
        message_id=new_id,
        type=TYPE_RECEIPT_NOTICE,
        body=encode(notice),
        client_id=None,
        reply_to=None,
        sent_at=now,
    )


def _client_id(incoming: Incoming) -> str | None:
    if incoming.message_id is None:
        return None
    return incoming.message_id[:MAX_CLIENT_ID_CHARS]


def _server_id(
    incoming: Incoming, sender: str, client_id: str | None, now: datetime, fresh_id: str
) -> str:
    """Stable across redeliveries when the client gave an id and a believable send time."""
    client_ms = incoming.client_ms
    if client_id is None or client_ms is None or isinstance(client_ms, bool):
        return fresh_id
    if not 0 < client_ms <= now.timestamp() * 1000 + MAX_CLOCK_AHEAD_MS:
        return fresh_id
    return stable_id(sender, client_id, client_ms)


def _reply_to(incoming: Incoming) -> str | None:
    """Only a direct reply-to is answered: any other name would let a sender make the relay
    write into a queue of its choosing through the default exchange."""
    reply_to = incoming.reply_to
    if reply_to and reply_to.startswith(REPLY_TO + ".") and len(reply_to) < 512:
        return reply_to
    return None


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
