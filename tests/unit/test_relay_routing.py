"""The relay's pure decisions: route(), answer_for() and the judgement of a refusal."""

import json
from datetime import UTC, datetime

import pytest

from broker.backoff import backoff_delay
from protocol.ids import stable_id
from protocol.messages import MAX_BODY_BYTES, DeliveredMessage, ReceiptNotice
from protocol.topology import TYPE_MESSAGE, TYPE_RECEIPT, TYPE_RECEIPT_NOTICE, TYPE_SEND
from services.relay.inbox_checks import (
    InboxCheck,
    InboxState,
    check_from_close,
    check_from_declare_ok,
    judge_refusal,
)
from services.relay.routing import (
    DeadLetter,
    Deliver,
    Incoming,
    Reply,
    Verdict,
    answer_for,
    route,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
FRESH = "01900000-0000-7000-8000-000000000001"
REPLY = "amq.rabbitmq.reply-to.g1hkABNyYWJiaXRAbG9jYWxob3N0AAAAAQ=="


def incoming(body: object = None, **overrides: object) -> Incoming:
    if body is None:
        body = {"to": "bob", "text": "hello"}
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields: dict[str, object] = {
        "body": raw,
        "user_id": "alice",
        "content_type": "application/json",
        "type": TYPE_SEND,
        "message_id": "client-1",
        "reply_to": REPLY,
        "client_ms": NOW_MS - 10,
    }
    fields.update(overrides)
    return Incoming(**fields)  # type: ignore[arg-type]


def test_a_good_message_is_delivered_with_the_broker_checked_sender():
    outcome = route(
        incoming({"to": "bob", "text": " hi ", "from": "mallory"}), now=NOW, new_id=FRESH
    )
    assert isinstance(outcome, Deliver)
    assert outcome.recipient == "bob"
    assert outcome.type == TYPE_MESSAGE
    message = DeliveredMessage.model_validate_json(outcome.body)
    assert message.sender == "alice"
    assert message.text == "hi"
    assert message.client_id == "client-1"
    assert message.sent_at == NOW
    assert message.id == outcome.message_id == stable_id("alice", "client-1", NOW_MS - 10)


def test_the_same_outbox_message_routed_twice_gets_the_same_id():
    first = route(incoming(), now=NOW, new_id=FRESH)
    again = route(incoming(), now=NOW.replace(second=9), new_id="another-fresh-id")
    assert isinstance(first, Deliver) and isinstance(again, Deliver)
    assert first.message_id == again.message_id


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_ms": None},
        {"message_id": None},
        {"client_ms": NOW_MS + 3_600_000},
        {"client_ms": NOW_MS + 301_000},  # more than five minutes ahead of the relay
        {"client_ms": 1},  # 1970: a client must not put its message first in history
        {"client_ms": NOW_MS - 25 * 3_600_000},  # more than a day behind
        {"client_ms": -5},
    ],
)
def test_without_a_believable_client_id_and_time_the_fresh_id_is_used(overrides):
    outcome = route(incoming(**overrides), now=NOW, new_id=FRESH)
    assert isinstance(outcome, Deliver)
    assert outcome.message_id == FRESH


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"body": b"{not json"}, "not JSON"),
        ({"body": b"\xff\xfe"}, "not JSON"),
        ({"user_id": None}, "no user_id"),
        ({"user_id": ""}, "no user_id"),
        ({"user_id": "Not A User"}, "not a user"),
        ({"content_type": "text/plain"}, "content type"),
        ({"content_type": None}, "content type"),
        ({"type": "messenger.unknown"}, "unknown message type"),
        ({"body": b'{"to": "bob", "text": "' + b"x" * MAX_BODY_BYTES + b'"}'}, "exceeds"),
    ],
)
def test_what_cannot_be_read_is_dead_lettered(overrides, reason):
    raw = overrides.pop("body", None)
    outcome = route(incoming(raw, **overrides), now=NOW, new_id=FRESH)
    assert isinstance(outcome, DeadLetter)
    assert reason in outcome.reason


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"to": "bob", "text": "   "}, "text: text must not be empty"),
        ({"to": "Bob", "text": "x"}, "to: username must be lowercase"),
        ({"text": "x"}, "to: Field required"),
        ({"to": "bob", "text": "x" * 10_001}, "at most 10000"),
        ({"to": "bob", "text": "a\x00b"}, "U+0000"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_messages_are_answered_with_what_was_wrong(body, detail):
    outcome = route(incoming(body), now=NOW, new_id=FRESH)
    assert isinstance(outcome, Reply)
    assert outcome.answer is not None
    assert outcome.answer.reply_to == REPLY
    answer = outcome.answer.body
    assert (answer.status, answer.reason, answer.client_id) == ("rejected", "invalid", "client-1")
    assert detail in (answer.detail or "")


def test_only_a_direct_reply_to_is_answered():
    """Any other reply-to would make the relay publish into a queue the sender chose."""
    outcome = route(
        incoming({"to": "bob", "text": ""}, reply_to="inbox.bob"), now=NOW, new_id=FRESH
    )
    assert outcome == Reply(None)
    deliver = route(incoming(reply_to="inbox.bob"), now=NOW, new_id=FRESH)
    assert isinstance(deliver, Deliver)
    assert deliver.reply_to is None
    assert answer_for(deliver, Verdict.CONFIRMED) is None


def test_answers_follow_the_brokers_verdict():
    deliver = route(incoming(), now=NOW, new_id=FRESH)
    assert isinstance(deliver, Deliver)
    accepted = answer_for(deliver, Verdict.CONFIRMED)
    assert accepted is not None
    assert accepted.body.status == "accepted"
    assert accepted.body.id == deliver.message_id
    assert accepted.body.sent_at == NOW
    returned = answer_for(deliver, Verdict.RETURNED)
    assert returned is not None and returned.body.reason == "unknown_recipient"
    nacked = answer_for(deliver, Verdict.NACKED)
    assert nacked is not None and nacked.body.reason == "inbox_full"
    assert all(a.body.client_id == "client-1" for a in (accepted, returned, nacked))


def test_a_receipt_goes_to_the_original_sender_and_names_the_reader():
    body = {"message_id": "m-9", "to": "alice", "status": "read"}
    outcome = route(
        incoming(body, user_id="bob", type=TYPE_RECEIPT, reply_to=None), now=NOW, new_id=FRESH
    )
    assert isinstance(outcome, Deliver)
    assert (outcome.recipient, outcome.type, outcome.reply_to) == (
        "alice",
        TYPE_RECEIPT_NOTICE,
        None,
    )
    notice = ReceiptNotice.model_validate_json(outcome.body)
    assert (notice.message_id, notice.reader, notice.status, notice.at) == (
        "m-9",
        "bob",
        "read",
        NOW,
    )


def test_a_bad_receipt_is_invalid_not_fatal():
    body = {"message_id": "m-9", "to": "alice", "status": "seen"}
    outcome = route(incoming(body, type=TYPE_RECEIPT), now=NOW, new_id=FRESH)
    assert isinstance(outcome, Reply)


# -- a refused inbox publish, judged against the state of the inbox ------------------------

DOWN_TEXT = (
    "NOT_FOUND - home node 'rabbit@b' of durable queue 'inbox.c' in vhost 'messenger' "
    "is down or inaccessible"
)


def test_a_404_names_a_missing_inbox_unless_its_node_is_down():
    assert check_from_close(404, "NOT_FOUND - no queue 'inbox.c'").state is InboxState.MISSING
    assert check_from_close(404, DOWN_TEXT).state is InboxState.UNAVAILABLE
    assert check_from_close(None, "connection lost").state is InboxState.UNAVAILABLE
    assert check_from_close(541, "INTERNAL_ERROR").state is InboxState.UNAVAILABLE


@pytest.mark.parametrize(
    ("verdict", "check", "outcome"),
    [
        (Verdict.RETURNED, InboxCheck(InboxState.MISSING), Verdict.RETURNED),
        (Verdict.NACKED, InboxCheck(InboxState.MISSING), Verdict.RETURNED),
        (Verdict.RETURNED, InboxCheck(InboxState.UNAVAILABLE), Verdict.UNAVAILABLE),
        (Verdict.NACKED, InboxCheck(InboxState.UNAVAILABLE), Verdict.UNAVAILABLE),
        (Verdict.NACKED, check_from_declare_ok(3), Verdict.NACKED),
        (Verdict.NACKED, check_from_declare_ok(0), Verdict.UNAVAILABLE),
        (Verdict.RETURNED, check_from_declare_ok(3), Verdict.UNAVAILABLE),
    ],
)
def test_a_refusal_is_unknown_recipient_full_or_retried(verdict, check, outcome):
    assert judge_refusal(verdict, check) is outcome


def test_a_held_message_gets_no_answer_yet():
    deliver = route(incoming(), now=NOW, new_id=FRESH)
    assert isinstance(deliver, Deliver)
    assert answer_for(deliver, Verdict.UNAVAILABLE) is None


def test_retry_delays_double_up_to_the_cap():
    assert [backoff_delay(n, maximum=3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("client_ms", [NOW_MS - 23 * 3_600_000, NOW_MS, NOW_MS + 299_000])
def test_a_send_time_within_the_window_gives_the_stable_id_at_any_later_redelivery(client_ms):
    """Idempotent: the id depends on the client's time, not on when the relay handles it,
    as long as that time was believable at the first attempt and still is."""
    first = route(incoming(client_ms=client_ms), now=NOW, new_id=FRESH)
    later = route(incoming(client_ms=client_ms), now=NOW.replace(minute=5), new_id="other")
    assert isinstance(first, Deliver) and isinstance(later, Deliver)
    assert first.message_id == later.message_id != FRESH
    assert int(first.message_id.replace("-", "")[:12], 16) == client_ms


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"body": b"[" * 30_000 + b"]" * 30_000}, "RecursionError"),
        ({"body": b'{"to": "bob", "text": "x", "n": ' + b"9" * 5000 + b"}"}, "digits"),
        ({"problem": "the reply_to property is not UTF-8 text"}, "reply_to"),
    ],
)
def test_input_that_used_to_crash_the_relay_is_dead_lettered(overrides, reason):
    outcome = route(incoming(**overrides), now=NOW, new_id=FRESH)
    assert isinstance(outcome, DeadLetter)
    assert reason in outcome.reason


def test_a_lone_surrogate_in_a_text_is_invalid_not_a_crash():
    outcome = route(incoming(b'{"to": "bob", "text": "a\\ud800b"}'), now=NOW, new_id=FRESH)
    assert isinstance(outcome, Reply) and outcome.answer is not None
    assert outcome.answer.body.reason == "invalid"
    assert "surrogate" in (outcome.answer.body.detail or "")


def test_a_receipt_naming_a_lone_surrogate_id_is_refused_not_raised():
    body = b'{"message_id": "\\udfff", "to": "bob", "status": "read"}'
    outcome = route(incoming(body, type=TYPE_RECEIPT, reply_to=None), now=NOW, new_id=FRESH)
    assert isinstance(outcome, Reply | DeadLetter)
