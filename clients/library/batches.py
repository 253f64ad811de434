"""What one I/O turn of the inbox brought, decoded and handed over: pure, no pika.

`decode_batch()` turns deliveries into the calls to make, in order: runs of messages as one
list, receipt notices one by one, each with the delivery tag that may be acked once the call
returned. It never raises: a body that cannot be read, or of a type this client does not
know, is skipped (logged) and acked with its neighbours, so it cannot block the inbox.
`hand_over()` makes the calls and acks once, after them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from protocol.messages import DeliveredMessage, ReceiptNotice
from protocol.topology import TYPE_MESSAGE, TYPE_RECEIPT_NOTICE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One inbox delivery: its tag, the AMQP `type` property, the body."""

    tag: int
    type: str | None
    body: bytes


@dataclass(frozen=True)
class Handover:
    """One call to make (`messages`, a `receipt`, or nothing for skipped deliveries) and
    the delivery tag everything up to which is handled once it returned."""

    ack_through: int
    messages: tuple[DeliveredMessage, ...] = ()
    receipt: ReceiptNotice | None = None


def decode_batch(deliveries: Sequence[Delivery]) -> list[Handover]:
    steps: list[Handover] = []
    run: list[DeliveredMessage] = []
    run_tag = 0  # the last tag the pending run covers (its messages, and skips within it)

    def end_run() -> None:
        if run:
            steps.append(Handover(run_tag, messages=tuple(run)))
            run.clear()

    for delivery in deliveries:
        kind = delivery.type or TYPE_MESSAGE
        try:
            if kind == TYPE_MESSAGE:
                run.append(DeliveredMessage.model_validate_json(delivery.body))
                run_tag = delivery.tag
                continue
            if kind == TYPE_RECEIPT_NOTICE:
                notice = ReceiptNotice.model_validate_json(delivery.body)
                end_run()
                steps.append(Handover(delivery.tag, receipt=notice))
                run_tag = delivery.tag
                continue
            logger.warning("skipped an inbox message of unknown type %r", kind)
        except (ValidationError, ValueError):
            logger.warning("skipped an inbox message that could not be read")
        run_tag = delivery.tag
        if not run:
            steps.append(Handover(delivery.tag))
    end_run()
    return steps


def hand_over(
    deliveries: Sequence[Delivery],
    on_messages: Callable[[list[DeliveredMessage]], None],
    on_receipt: Callable[[ReceiptNotice], None] | None,
    ack_through: Callable[[int], None],
) -> int:
    """Make the calls `decode_batch` says, in order, then `ack_through(tag)` once. If a
    callback raises, what was handled before it is acked and the rest stays unacked.
    Returns how many deliveries there were."""
    done = 0
    try:
        for step in decode_batch(deliveries):
            if step.messages:
                on_messages(list(step.messages))
            elif step.receipt is not None and on_receipt is not None:
                on_receipt(step.receipt)
            done = step.ack_through
    finally:
        if done:
            ack_through(done)
    return len(deliveries)
