"""A browser's sends (STOMP, through Web STOMP) get the same stable id as the CLI's."""

from datetime import UTC, datetime

import pika
import pytest

from protocol.ids import stable_id
from protocol.messages import SENT_MS_HEADER
from services.relay.routing import Deliver, Incoming, route
from services.relay.worker import _header_int

NOW_MS = 1_795_882_359_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NOW_MS, NOW_MS),  # AMQP clients send a number
        (str(NOW_MS), NOW_MS),  # STOMP headers reach AMQP as strings
        (str(NOW_MS).encode(), NOW_MS),
        ("12x", None),
        ("-5", None),
        ("1" * 40, None),
        ("١٢٣", None),  # digits, but not ASCII ones
        (True, None),
        (None, None),
    ],
)
def test_the_send_time_header_is_read_from_a_number_or_its_decimal_text(value, expected):
    headers = {} if value is None else {SENT_MS_HEADER: value}
    assert _header_int(headers, SENT_MS_HEADER) == expected


def test_a_stomp_send_gets_the_stable_id():
    props = pika.BasicProperties(headers={SENT_MS_HEADER: str(NOW_MS)})
    incoming = Incoming(
        body=b'{"to": "bob", "text": "hi"}',
        user_id="alice",
        content_type="application/json",
        type="messenger.send",
        message_id="c1",
        reply_to=None,
        client_ms=_header_int(props.headers, SENT_MS_HEADER),
    )
    outcome = route(incoming, now=datetime.fromtimestamp(NOW_MS / 1000 + 1, UTC), new_id="fresh")
    assert isinstance(outcome, Deliver)
    assert outcome.message_id == stable_id("alice", "c1", NOW_MS)
