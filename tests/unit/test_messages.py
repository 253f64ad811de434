"""The wire contract: bodies round-trip through JSON, unknown fields are ignored."""

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from protocol.messages import (
    MAX_TEXT_CHARS,
    DeliveredMessage,
    ReceiptNotice,
    ReceiptRequest,
    RelayAnswer,
    SendRequest,
    check_text,
    encode,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_delivered_message_json_has_the_pinned_fields():
    message = DeliveredMessage(id="i1", sender="alice", to="bob", text="hi", sent_at=NOW)
    data = json.loads(encode(message))
    assert {"id", "from", "to", "text", "sent_at"} <= data.keys()
    assert data["from"] == "alice"
    assert DeliveredMessage.model_validate_json(encode(message)) == message


def test_unknown_fields_from_a_newer_peer_are_ignored():
    body = {"id": "i", "from": "a", "to": "b", "text": "t", "sent_at": NOW.isoformat(), "new": 1}
    assert DeliveredMessage.model_validate(body).sender == "a"
    answer = RelayAnswer.model_validate({"status": "accepted", "future_field": [1, 2]})
    assert answer.status == "accepted"


def test_send_request_trims_text_and_checks_the_recipient():
    assert SendRequest.model_validate({"to": "bob", "text": "  hi \n"}).text == "hi"
    with pytest.raises(ValidationError, match="lowercase"):
        SendRequest.model_validate({"to": "Bob", "text": "hi"})
    with pytest.raises(ValidationError, match="reserved"):
        SendRequest.model_validate({"to": "relay", "text": "hi"})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        (" \n\t ", "empty"),
        ("x" * (MAX_TEXT_CHARS + 1), "at most"),
        ("bell\x07", "U+0007"),
        ("del\x7f", "U+007F"),
        ("c1\x85c1", "U+0085"),
    ],
)
def test_check_text_refuses(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        check_text(text)


def test_check_text_allows_newline_tab_and_unicode():
    assert check_text("line 1\n\tline 2 ✓ 😀") == "line 1\n\tline 2 ✓ 😀"
    assert check_text("x" * MAX_TEXT_CHARS) == "x" * MAX_TEXT_CHARS


def test_receipts_round_trip():
    request = ReceiptRequest(message_id="m1", to="alice", status="read")
    assert ReceiptRequest.model_validate_json(encode(request)) == request
    notice = ReceiptNotice(message_id="m1", reader="bob", status="delivered", at=NOW)
    assert ReceiptNotice.model_validate_json(encode(notice)) == notice
    with pytest.raises(ValidationError):
        ReceiptRequest.model_validate({"message_id": "m1", "to": "alice", "status": "seen"})
