"""The sign-up rules of protocol.accounts (username, display name, password)."""

import hashlib

import pytest
from pydantic import ValidationError

from protocol.accounts import (
    LoginRequest,
    SignupRequest,
    check_display_name,
    check_password,
    check_username,
    connection_name,
    is_valid_username,
    parse_connection_name,
    session_tag_of_hash,
)


@pytest.mark.parametrize(
    "username",
    ["abc", "a" * 32, "alice", "bob.smith", "x_y-z", "0day", "a..b", "user123"],
)
def test_legal_usernames_are_accepted(username):
    assert check_username(username) == username


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("ab", "3 to 32"),
        ("a" * 33, "3 to 32"),
        ("", "3 to 32"),
        ("Alice", "lowercase"),
        ("al ice", "may hold only"),
        ("../etc", "may hold only"),
        ("-abc", "must start with a letter or digit"),
        (".abc", "must start with a letter or digit"),
        ("_abc", "must start with a letter or digit"),
        ("abc/def", "may hold only"),
        ("abc#", "may hold only"),
        ("ab*c", "may hold only"),
        ("ünï", "may hold only"),
        ("abc\n", "may hold only"),
        ("guest", "reserved"),
        ("admin", "reserved"),
        ("relay", "reserved"),
        ("auth", "reserved"),
        ("system", "reserved"),
    ],
)
def test_illegal_usernames_are_refused_with_a_reason(username, reason):
    with pytest.raises(ValueError, match=reason):
        check_username(username)
    assert not is_valid_username(username)


@pytest.mark.parametrize("name", ["Zoë", "Ångström 🚀", "李小龍", "O'Brien-Smith", "x" * 64, "a b"])
def test_display_names_with_emoji_and_accents_are_legal(name):
    assert check_display_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "1 to 64"),
        ("x" * 65, "1 to 64"),
        ("   ", "blank"),
        ("bell\x07", "U\\+0007"),
        ("tab\there", "U\\+0009"),
        ("line\nbreak", "U\\+000A"),
        ("nul\x00", "U\\+0000"),
        ("zero\u200bwidth", "U\\+200B"),
        ("rtl\u202eoverride", "U\\+202E"),
        ("del\x7f", "U\\+007F"),
    ],
)
def test_display_names_with_control_characters_or_bad_length_are_refused(name, reason):
    with pytest.raises(ValueError, match=reason):
        check_display_name(name)


def test_passwords_need_eight_characters():
    assert check_password("12345678") == "12345678"
    with pytest.raises(ValueError, match="at least 8"):
        check_password("1234567")
    with pytest.raises(ValueError, match="at most"):
        check_password("x" * 1025)


def test_signup_request_reports_the_rule_that_failed():
    with pytest.raises(ValidationError, match="username must be lowercase"):
        SignupRequest.model_validate(
            {"username": "Bob", "display_name": "Bob", "password": "long enough"}
        )


def test_login_request_does_not_validate_the_username_so_bad_names_get_a_plain_401():
    request = LoginRequest.model_validate({"username": "../Bob", "password": "whatever"})
    assert request.username == "../Bob"


def test_a_connection_name_says_whose_session_without_holding_the_token():
    token = "tok-" + "x" * 40
    name = connection_name("alice", token)
    assert token not in name
    assert name.startswith("messenger client alice ")
    parsed = parse_connection_name(name)
    assert parsed is not None
    username, tag = parsed
    assert username == "alice"
    assert tag == session_tag_of_hash(hashlib.sha256(token.encode()).hexdigest())
    assert connection_name("alice", "another token") != name


@pytest.mark.parametrize(
    "name",
    [None, "", "messenger client alice", "messenger client alice 0123", "my script", 7,
     "messenger client alice 0123456789abcdef extra"],
)  # fmt: skip
def test_other_connection_names_are_not_sessions(name):
    assert parse_connection_name(name) is None


def test_a_lone_surrogate_in_a_sign_up_password_is_invalid_input():
    body = {"username": "alice", "display_name": "Alice", "password": "abcdefgh\ud800"}
    with pytest.raises(ValidationError, match="password must not contain the lone surrogate"):
        SignupRequest.model_validate(body)
