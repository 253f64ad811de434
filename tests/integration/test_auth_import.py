"""`messenger-auth import` / `export` against the running service's store and the broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import argon2
import httpx

from protocol.topology import inbox_queue
from services.auth.store import Store
from tests.integration.stack import (
    AuthService,
    Broker,
    close_quietly,
    deliver_as_relay,
    unique_username,
)


def write_users(path: Path, users: list[object]) -> Path:
    path.write_text(json.dumps({"users": users}), encoding="utf-8")
    return path


def consume_one(broker: Broker, username: str, password: str) -> bytes:
    """Log in over AMQP as `username` and take one message from the own inbox."""
    deliver_as_relay(broker.node, username, b"welcome")
    connection = broker.connect(username, password)
    try:
        channel = connection.channel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            method, _props, body = channel.basic_get(inbox_queue(username), auto_ack=True)
            if method is not None:
                return bytes(body)
            time.sleep(0.05)
        raise AssertionError("nothing arrived in the inbox")
    finally:
        close_quietly(connection)


def test_import_creates_valid_users_and_reports_invalid_ones(auth: AuthService, tmp_path: Path):
    good, bad = unique_username(), unique_username()
    path = write_users(
        tmp_path / "users.json",
        [
            {"username": good, "display_name": "Good", "password": "long enough"},
            {"username": bad.upper(), "display_name": "Bad", "password": "long enough"},
            {"username": bad, "display_name": "No secret"},
        ],
    )
    result = auth.cli("import", str(path))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("created") and good in line for line in lines)
    assert any(
        line.startswith("invalid") and "#2" in line and "lowercase" in line for line in lines
    )
    assert any(
        line.startswith("invalid") and "#3" in line and "exactly one" in line for line in lines
    )
    assert "1 created, 0 already present, 2 invalid" in result.stdout
    assert httpx.get(f"{auth.url}/v1/users/{good}").status_code == 200
    assert httpx.get(f"{auth.url}/v1/users/{bad}").status_code == 404


def test_import_is_idempotent(auth: AuthService, tmp_path: Path):
    username = unique_username()
    path = write_users(
        tmp_path / "users.json",
        [{"username": username, "display_name": "Once", "password": "long enough"}],
    )
    first = auth.cli("import", str(path))
    second = auth.cli("import", str(path))
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "1 created, 0 already present, 0 invalid" in first.stdout
    assert "0 created, 1 already present, 0 invalid" in second.stdout


def test_an_imported_user_with_a_password_logs_in_over_amqp_and_consumes(
    auth: AuthService, broker: Broker, tmp_path: Path
):
    username = unique_username()
    path = write_users(
        tmp_path / "users.json",
        [{"username": username, "display_name": "Imported", "password": "imported pw"}],
    )
    assert auth.cli("import", str(path)).returncode == 0
    session = httpx.post(
        f"{auth.url}/v1/sessions", json={"username": username, "password": "imported pw"}
    )
    assert session.status_code == 200
    assert consume_one(broker, username, session.json()["token"]) == b"welcome"


def test_an_imported_user_with_a_hash_logs_in_and_the_hash_is_upgraded(
    auth: AuthService, broker: Broker, tmp_path: Path
):
    username = unique_username()
    old_hash = argon2.PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1).hash("hashed pw")
    path = write_users(
        tmp_path / "users.json",
        [{"username": username, "display_name": "From hash", "password_hash": old_hash}],
    )
    assert auth.cli("import", str(path)).returncode == 0
    assert consume_one(broker, username, "hashed pw") == b"welcome"  # broker login by password
    store = Store(auth.db_path)
    try:
        record = store.get_user(username)
    finally:
        store.close()
    assert record is not None
    assert record.password_hash != old_hash  # the service's parameters (m=8192 in tests)
    assert "m=8192" in record.password_hash


def test_export_never_contains_a_plaintext_password(auth: AuthService, tmp_path: Path):
    username = unique_username()
    path = write_users(
        tmp_path / "users.json",
        [{"username": username, "display_name": "Secretive", "password": "plain secret 42"}],
    )
    assert auth.cli("import", str(path)).returncode == 0
    result = auth.cli("export")
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert "plain secret 42" not in result.stdout
    (entry,) = [u for u in exported["users"] if u["username"] == username]
    assert set(entry) == {"username", "display_name", "password_hash"}
    assert entry["password_hash"].startswith("$argon2id$")


def test_an_unreadable_import_file_is_one_error_line(auth: AuthService, tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    result = auth.cli("import", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error:" in result.stderr
    assert "Traceback" not in result.stderr
    missing = auth.cli("import", str(tmp_path / "missing.json"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_import_accepts_users_from_stdin(auth: AuthService):
    username = unique_username()
    document = {
        "users": [{"username": username, "display_name": "Piped", "password": "long enough"}]
    }
    result = auth.cli("import", "-", stdin=json.dumps(document))
    assert result.returncode == 0, result.stderr
    assert httpx.get(f"{auth.url}/v1/users/{username}").status_code == 200


def test_a_wrong_service_password_is_reported_as_a_refused_login(auth: AuthService, tmp_path: Path):
    username = unique_username()
    path = write_users(
        tmp_path / "users.json",
        [{"username": username, "display_name": "Nobody", "password": "long enough"}],
    )
    result = auth.cli_with(
        {"MESSENGER_AUTH_AMQP_PASSWORD": "not the password"}, "import", str(path)
    )
    assert result.returncode == 2
    assert "refused the login" in result.stderr and "unreachable" not in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert httpx.get(f"{auth.url}/v1/users/{username}").status_code == 404


def test_a_bogus_password_hash_is_refused_and_no_user_is_created(auth: AuthService, tmp_path: Path):
    username = unique_username()
    bogus = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$bm90IGEgcmVhbCBoYXNo!"
    path = write_users(
        tmp_path / "users.json",
        [{"username": username, "display_name": "Bogus", "password_hash": bogus}],
    )
    result = auth.cli("import", str(path))
    assert result.returncode == 1
    assert "invalid  #1" in result.stdout and "argon2" in result.stdout
    assert httpx.get(f"{auth.url}/v1/users/{username}").status_code == 404
