"""Hostile input to the account API, the wire and the CLI: a clear refusal, nothing broken.

Before: a lone surrogate in a sign-up password was an HTTP 500; a sender's free-text message
id reached the recipient's `--json` with raw C1 control bytes; users.sqlite3 was 0644; a
non-UTF-8 argument to the CLI printed `unexpected error (UnicodeEncodeError …)`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import httpx
import pika

from protocol.messages import SendRequest, encode
from protocol.topology import CONTENT_TYPE, OUTBOX_EXCHANGE, TYPE_SEND
from tests.integration.cli_driver import COMMAND, Person
from tests.integration.stack import AuthService, Broker, RelayProcess, close_quietly, eventually


def test_a_lone_surrogate_in_a_sign_up_password_is_422_and_creates_nobody(auth: AuthService):
    username = f"u{uuid.uuid4().hex[:12]}"
    body = '"display_name": "Mallory", "password": "abcdefgh\\ud800"'  # a JSON escape
    raw = f'{{"username": "{username}", {body}}}'
    response = httpx.post(
        f"{auth.url}/v1/users",
        content=raw.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422
    assert "password" in response.json()["detail"]
    assert httpx.get(f"{auth.url}/v1/users/{username}", timeout=30).status_code == 404
    assert httpx.get(f"{auth.url}/healthz", timeout=30).status_code == 200


def test_a_hostile_message_id_never_reaches_the_recipients_json(
    auth: AuthService, broker: Broker, relay: RelayProcess, tmp_path: Path
):
    mallory = Person.signed_up(tmp_path, auth, "mal", "Mallory")
    mallory.login()
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob")
    bob.login()
    connection = broker.connect(mallory.username, mallory.password)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            OUTBOX_EXCHANGE,
            mallory.username,
            encode(SendRequest(to=bob.username, text="look at my id")),
            pika.BasicProperties(
                user_id=mallory.username,
                content_type=CONTENT_TYPE,
                type=TYPE_SEND,
                message_id="evil\x85\x9b2J\x1b[31mred",
                delivery_mode=pika.DeliveryMode.Persistent,
            ),
        )
    finally:
        close_quietly(connection)

    def arrived() -> list[dict[str, object]]:
        return [
            row for row in bob.ok("inbox", "--json").json_lines() if row["text"] == "look at my id"
        ]

    rows = eventually(arrived, timeout=30)
    assert rows[0]["from"] == mallory.username
    shown = bob.ok("history", mallory.username, "--json").out
    assert not any(0x80 <= ord(char) < 0xA0 or char == "\x1b" for char in shown)
    # Honest traffic goes on: bob answers, mallory gets it.
    bob.ok("send", mallory.username, "fine")
    eventually(lambda: any(r["text"] == "fine" for r in mallory.ok("inbox", "--json").json_lines()))


def test_the_user_store_is_for_its_owner_only(auth: AuthService):
    mode = stat.S_IMODE(auth.db_path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    for sidecar in ("-wal", "-shm"):
        path = auth.db_path.with_name(auth.db_path.name + sidecar)
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_non_utf8_arguments_get_one_clear_line(auth: AuthService, tmp_path: Path):
    alice = Person.signed_up(tmp_path, auth, "ali", "Alice")
    alice.login()
    done = subprocess.run(
        [*(os.fsencode(part) for part in COMMAND), b"send", b"bob", b"caf\xff"],
        env={k.encode(): v.encode() for k, v in alice.env(LC_ALL="C.UTF-8").items()},
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = done.stderr.decode("utf-8", "replace").strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert "not valid UTF-8" in err
    assert "unexpected error" not in err and "Traceback" not in err
