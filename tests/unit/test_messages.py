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
    is_valid_client_id,
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


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (SendRequest, {"to": "bob", "text": "a\ud800b"}),
        (RelayAnswer, {"status": "rejected", "detail": "\udcff"}),
        (ReceiptRequest, {"message_id": "m\udfff", "to": "bob", "status": "read"}),
    ],
)
def test_a_lone_surrogate_in_any_string_is_invalid_input(model, fields):
    # As Python's json module (FastAPI, the relay) gives it; pydantic's own JSON parser and
    # its str type refuse some of these already, the model refuses all.
    with pytest.raises(ValidationError, match=r"surrogate|unicode"):
        model.model_validate(json.loads(json.dumps(fields)))


def test_a_surrogate_pair_as_json_escapes_is_one_legal_emoji():
    request = SendRequest.model_validate_json('{"to": "bob", "text": "\\ud83d\\ude00"}')
    assert request.text == "\U0001f600"


@pytest.mark.parametrize("client_id", ["0b9f2c1e-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "a", "x" * 128])
def test_client_ids_of_the_id_alphabet_are_kept(client_id):
    assert is_valid_client_id(client_id)
    answer = DeliveredMessage(
        id="i", client_id=client_id, sender="a", to="b", text="t", sent_at=NOW
    )
    assert answer.client_id == client_id


@pytest.mark.parametrize("client_id", ["", "x" * 129, "a\x85b", "a\x1b[2Jb", "a b", "é", None, 5])
def test_client_ids_with_controls_spaces_or_too_long_are_refused(client_id):
    assert not is_valid_client_id(client_id)
    if isinstance(client_id, str):
        with pytest.raises(ValidationError, match="client id"):
            DeliveredMessage(id="i", client_id=client_id, sender="a", to="b", text="t", sent_at=NOW)
