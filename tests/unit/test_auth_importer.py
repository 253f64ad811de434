"""Import and export of users (the JSON file format of services.auth.importer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import argon2
import pytest

from services.auth.errors import BrokerLoginRefused, BrokerUnavailable
from services.auth.hashing import PasswordHashing
from services.auth.importer import ImportFileError, Outcome, export_users, import_users, parse_file
from services.auth.store import Store


class FakeInboxes:
    def __init__(self, fail_after: int | None = None, error: type[Exception] = BrokerUnavailable):
        self.declared: list[str] = []
        self.fail_after = fail_after
        self.error = error

    def declare(self, username: str) -> None:
        if self.fail_after is not None and len(self.declared) >= self.fail_after:
            raise self.error("down")
        self.declared.append(username)


HASHING = PasswordHashing(time_cost=1, memory_kib=1024, parallelism=1)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "users.sqlite3")


def test_valid_entries_are_imported_and_invalid_ones_reported_with_a_reason(store):
    entries = [
        {"username": "alice", "display_name": "Alice", "password": "long enough"},
        {"username": "Bob", "display_name": "Bob", "password": "long enough"},
        {"username": "carol", "display_name": "Carol", "password_hash": HASHING.hash("pw pw pw")},
        {"username": "dave", "display_name": "Dave"},
        {"username": "erin", "display_name": "E", "password": "pw", "password_hash": "x"},
        {"username": "frank", "display_name": "F", "password_hash": "plaintext!"},
        {"username": "gina", "display_name": "G\x00", "password": "long enough"},
        "not an object",
        {"username": "hank", "display_name": "H", "password": "short"},
    ]
    inboxes = FakeInboxes()
    results = import_users(entries, store, HASHING, inboxes)
    outcomes = {r.index: (r.outcome, r.reason) for r in results}
    assert outcomes[1] == (Outcome.CREATED, "")
    assert outcomes[2] == (Outcome.INVALID, "username must be lowercase")
    assert outcomes[3] == (Outcome.CREATED, "")
    assert outcomes[4] == (Outcome.INVALID, "give exactly one of password and password_hash")
    assert outcomes[5][0] is Outcome.INVALID
    assert outcomes[6][0] is Outcome.INVALID
    assert outcomes[6][1].startswith("password_hash is not an argon2 hash")
    assert "U+0000" in outcomes[7][1]
    assert outcomes[8][0] is Outcome.INVALID
    assert "at least 8" in outcomes[9][1]
    assert [u.username for u in store.all_users()] == ["alice", "carol"]
    assert inboxes.declared == ["alice", "carol"]


def test_import_never_stores_a_plaintext_password(store):
    import_users(
        [{"username": "alice", "display_name": "A", "password": "my secret pw"}],
        store,
        HASHING,
        FakeInboxes(),
    )
    record = store.get_user("alice")
    assert record is not None
    assert "my secret pw" not in record.password_hash
    assert HASHING.verify(record.password_hash, "my secret pw")[0]


def test_import_is_idempotent_and_keeps_existing_users_as_they_are(store):
    entries = [{"username": "alice", "display_name": "Alice", "password": "long enough"}]
    import_users(entries, store, HASHING, FakeInboxes())
    before = store.get_user("alice")
    changed = [{"username": "alice", "display_name": "Changed", "password": "other password"}]
    inboxes = FakeInboxes()
    results = import_users(changed, store, HASHING, inboxes)
    assert [r.outcome for r in results] == [Outcome.PRESENT]
    assert store.get_user("alice") == before
    assert inboxes.declared == ["alice"]  # the inbox is (re)declared anyway


def test_import_stops_at_a_broker_failure_without_writing_that_user(store):
    entries = [
        {"username": f"user{i}", "display_name": "U", "password": "long enough"} for i in range(3)
    ]
    results = import_users(entries, store, HASHING, FakeInboxes(fail_after=1))
    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.FAILED]
    assert [u.username for u in store.all_users()] == ["user0"]


def test_a_refused_broker_login_is_reported_as_refused_not_as_unreachable(store):
    entries = [{"username": "alice", "display_name": "A", "password": "long enough"}]
    (refused,) = import_users(entries, store, HASHING, FakeInboxes(0, BrokerLoginRefused))
    (down,) = import_users(entries, store, HASHING, FakeInboxes(0, BrokerUnavailable))
    assert refused.outcome is down.outcome is Outcome.FAILED
    assert "refused the login" in refused.reason
    assert "unreachable" in down.reason and "refused" not in down.reason
    assert store.all_users() == []


VALID = HASHING.hash("some password")


@pytest.mark.parametrize(
    "bogus",
    [
        "$argon2id$v=19$m=65536,t=3,p=4$bogus$bogus",  # not base64
        "$argon2id$v=19$m=65536,t=3,p=4$YQ$YQ",  # salt and hash far too short
        "$argon2id$v=19$m=65536,t=3,p=4$$",
        VALID[:-1] + "!",
        VALID + "$extra",
        VALID.replace("p=1", "p=0"),
        VALID.replace("t=1", "t=999999"),
        VALID.replace("m=1024", "m=4"),
        "$2b$12$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0",  # bcrypt
        "plaintext!",
    ],
)
def test_a_password_hash_that_is_not_a_usable_argon2_hash_is_refused(store, bogus):
    entry = {"username": "alice", "display_name": "A", "password_hash": bogus}
    (result,) = import_users([entry], store, HASHING, FakeInboxes())
    assert result.outcome is Outcome.INVALID, bogus
    assert result.reason.startswith("password_hash")
    assert store.all_users() == []


def test_an_argon2i_hash_and_one_without_version_are_accepted(store):
    legacy = argon2.PasswordHasher(type=argon2.Type.I, time_cost=1, memory_cost=1024).hash("pw")
    entries = [
        {"username": "alice", "display_name": "A", "password_hash": legacy},
        {"username": "bob", "display_name": "B", "password_hash": VALID.replace("v=19$", "")},
    ]
    results = import_users(entries, store, HASHING, FakeInboxes())
    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.CREATED]


def test_export_writes_hashes_only_and_round_trips(store, tmp_path):
    import_users(
        [{"username": "alice", "display_name": "Zoë 🚀", "password": "my secret pw"}],
        store,
        HASHING,
        FakeInboxes(),
    )
    exported = export_users(store)
    text = json.dumps(exported)
    assert "my secret pw" not in text
    assert set(exported["users"][0]) == {"username", "display_name", "password_hash"}
    other = Store(tmp_path / "other.sqlite3")
    results = import_users(parse_file(text), other, HASHING, FakeInboxes())
    assert [r.outcome for r in results] == [Outcome.CREATED]
    original, copy = store.get_user("alice"), other.get_user("alice")
    assert original is not None and copy is not None
    assert copy.display_name == original.display_name
    assert copy.password_hash == original.password_hash


@pytest.mark.parametrize("text", ["", "{", "[]", '{"users": {}}', '{"people": []}'])
def test_an_unusable_file_is_refused_as_a_whole(text):
    with pytest.raises(ImportFileError):
        parse_file(text)


def test_the_documented_example_file_imports(store):
    """docs/operations.md shows the file format: its example must be a valid import."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    example = re.search(r"```json\n(.*?)```", doc, re.S)
    assert example is not None
    results = import_users(parse_file(example.group(1)), store, HASHING, FakeInboxes())
    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.CREATED]
