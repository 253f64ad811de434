"""Property tests of the relay's decode-and-route path: over arbitrary bodies, properties
and headers (and arbitrary property bytes, as a hostile client can publish them), pika's
guarded decoder, `decode()`, `route()` and the worker's `on_message` never raise, and every
message is settled exactly once: published to an inbox, answered and acked, or sent to
relay.dead (here: rejected, the fallback while the dead-letter channel is not open)."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime
from typing import Any

import pika
import pika.spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.pika_io import guard_property_decoding, undecodable
from protocol.messages import SENT_MS_HEADER
from protocol.topology import REPLY_TO, TYPE_RECEIPT, TYPE_SEND
from services.relay.rate_limits import Rate, RateLimits
from services.relay.routing import DeadLetter, Deliver, Reply, route
from services.relay.worker import decode
from tests.hostile.relay_attack import nested_table, table
from tests.unit.test_relay_worker import make_worker

guard_property_decoding()

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FRESH = "0194f1c5-0000-7000-8000-000000000000"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, lone surrogates included (JSON can carry them as \ud800 escapes).
any_text = st.text(st.characters(codec=None, categories=None), max_size=40)
names = st.sampled_from(["alice", "bob", "carol", "Bob", "", "a" * 40, "bob\n", "ünïcode"])
short_strings = st.one_of(st.none(), any_text, st.binary(max_size=40), names)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text, names
)
json_keys = st.sampled_from(["to", "text", "message_id", "status", "x"])
json_values = st.one_of(
    json_leaves,
    st.lists(json_leaves, max_size=4),
    st.dictionaries(json_keys, st.one_of(json_leaves, st.lists(json_leaves, max_size=3))),
)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # lone surrogates as \ud800


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(_json),
    st.builds(
        lambda to, text: _json({"to": to, "text": text}),
        names,
        st.one_of(any_text, names),
    ),
    st.builds(
        lambda to, mid, status: _json({"to": to, "message_id": mid, "status": status}),
        names,
        st.one_of(any_text, names),
        st.sampled_from(["delivered", "read", "eaten"]),
    ),
    st.integers(1, 20_000).map(lambda depth: b"[" * depth + b"]" * depth),
)
header_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # NaN and infinities included: pika's decoder int()s them
    st.binary(max_size=20),
    st.text(max_size=20),
    st.sampled_from([str(int(NOW.timestamp() * 1000)), "1", "-5", "9" * 30]),
)
header_values = st.one_of(
    header_leaves,
    st.lists(header_leaves, max_size=3),
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(header_leaves, st.lists(header_leaves, max_size=2)),
        max_size=3,
    ),
)
headers = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(st.just(SENT_MS_HEADER), st.text(max_size=10), st.binary(max_size=10)),
        header_values,
        max_size=4,
    ),
)


def _decode_as_pika(properties: pika.BasicProperties) -> pika.BasicProperties | None:
    """What the relay receives: the properties through pika's encoder, then its decoder."""
    try:
        raw = b"".join(properties.encode())
    except Exception:  # pika cannot encode it (a str that is not UTF-8, say): nobody sends it
        return None
    decoded = pika.BasicProperties()
    decoded.decode(raw)
    return decoded


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[pika.BasicProperties, bytes]:
    fields = {
        "content_type": draw(st.one_of(st.just("application/json"), short_strings)),
        "user_id": draw(st.one_of(st.just("alice"), short_strings)),
        "type": draw(st.one_of(st.sampled_from([TYPE_SEND, TYPE_RECEIPT]), short_strings)),
        "message_id": draw(short_strings),
        "reply_to": draw(st.one_of(st.just(REPLY_TO + ".abc"), short_strings)),
        "headers": draw(headers),
        "timestamp": draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
    }
    properties = pika.BasicProperties(**fields)
    decoded = _decode_as_pika(properties)
    return (decoded if decoded is not None else properties), draw(bodies)


@SETTINGS
@given(deliveries())
def test_decode_and_route_never_raise(delivery: tuple[pika.BasicProperties, bytes]):
    properties, body = delivery
    outcome = route(decode(properties, body), now=NOW, new_id=FRESH)
    assert isinstance(outcome, Deliver | Reply | DeadLetter)
    if isinstance(outcome, Deliver):
        json.loads(outcome.body.decode("utf-8"))  # what goes to an inbox is UTF-8 JSON
        assert outcome.recipient.isascii()


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_property_bytes_never_raise_out_of_pikas_decoder(raw: bytes):
    """Whatever bytes follow the property flags, the guarded decoder returns, and what it
    returns routes without raising."""
    properties = pika.BasicProperties()
    properties.decode(raw)  # no exception: the guard turned it into `undecodable`
    outcome = route(decode(properties, b"{}"), now=NOW, new_id=FRESH)
    if undecodable(properties) is not None:
        assert isinstance(outcome, DeadLetter)


@SETTINGS
@given(
    st.one_of(
        st.integers(1000, 5000).map(nested_table),
        st.builds(
            lambda v: table([(b"f", b"d" + struct.pack(">d", v))]),
            st.sampled_from([math.nan, math.inf, -math.inf]),
        ),
        st.integers(253402300800, 2**64 - 1).map(
            lambda t: table([(b"t", b"T" + struct.pack(">Q", t))])
        ),
        st.sampled_from(b"ZzQ\x00").map(lambda k: table([(b"k", bytes([k]) + b"\x00" * 8)])),
    )
)
def test_headers_pika_cannot_decode_make_a_dead_letter(headers_table: bytes):
    raw = struct.pack(">H", 1 << 13) + headers_table  # the headers flag, then the table
    properties = pika.BasicProperties()
    properties.decode(raw)
    assert undecodable(properties) is not None
    outcome = route(decode(properties, b"{}"), now=NOW, new_id=FRESH)
    assert isinstance(outcome, DeadLetter)
    assert "cannot decode" in outcome.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(deliveries(), min_size=1, max_size=8), st.booleans())
def test_the_worker_settles_every_message_once(
    batch: list[tuple[pika.BasicProperties, bytes]], tight: bool
):
    """With and without rate limits (tight: a burst of 1), every delivery is settled."""
    limits = None
    if tight:
        one = Rate(1.0, 1)
        limits = RateLimits(sender=one, recipient=one, receipts=one, clock=lambda: 0.0)
    rig = make_worker(limits=limits, bob=0)
    settled: list[int] = []

    def ack(delivery_tag: int, multiple: bool = False) -> None:
        """AMQP: `multiple` covers every delivery up to the tag not settled yet."""
        covered = range(1, delivery_tag + 1) if multiple else [delivery_tag]
        rejected = {tag for tag, _requeue in rig.channel.rejected}
        settled.extend(t for t in covered if t not in settled and t not in rejected)

    rig.channel.basic_ack = ack  # type: ignore[method-assign]
    for tag, (properties, body) in enumerate(batch, start=1):
        rig.worker.on_message(
            rig.channel,
            pika.spec.Basic.Deliver(delivery_tag=tag),
            properties,
            body,
        )
    inbox = [p for p in rig.channel.published if p["exchange"] == "inbox"]
    for seq in range(1, len(inbox) + 1):
        rig.confirm(seq)
    rig.connection.run_timers(up_to=0)  # the rate-limited acks of this I/O turn
    settled += [tag for tag, _requeue in rig.channel.rejected]
    assert sorted(settled) == list(range(1, len(batch) + 1))
    assert all(requeue is False for _tag, requeue in rig.channel.rejected)
