"""Validation errors become one readable line."""

import pytest
from pydantic import ValidationError

from protocol.accounts import SignupRequest
from services.auth.validation import describe_error, describe_errors


def errors_of(payload: object) -> str:
    with pytest.raises(ValidationError) as info:
        SignupRequest.model_validate(payload)
    return describe_errors(info.value.errors())


def test_a_rule_of_ours_reads_as_its_own_message():
    assert errors_of({"username": "Bob", "display_name": "B", "password": "12345678"}) == (
        "username must be lowercase"
    )


def test_missing_fields_are_named():
    assert errors_of({"username": "bob"}) == "display_name is required; password is required"


def test_a_wrong_type_names_the_field():
    message = errors_of({"username": 5, "display_name": "B", "password": "12345678"})
    assert message.startswith("username: input should be a valid string")


def test_json_errors_and_missing_bodies_are_described():
    assert describe_error(
        {"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error"}
    ) == ("request body is not valid JSON")
    assert describe_error({"type": "missing", "loc": ("body",), "msg": "Field required"}) == (
        "request body is required"
    )


def test_the_description_is_a_single_line():
    message = errors_of({"username": "a\nb", "display_name": "x\ny", "password": "1"})
    assert "\n" not in message
