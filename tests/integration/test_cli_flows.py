"""The `messenger` command against the real services: two people on one machine."""

from __future__ import annotations

import json
import re
import shutil
import signal
import stat
from pathlib import Path

import httpx
import pexpect
import pytest

from clients.cli.edge import FAILED
from protocol.topology import VHOST, inbox_queue
from tests.integration.cli_driver import COMMAND, Person
from tests.integration.stack import AuthService, Broker, RelayProcess, eventually

pytestmark = pytest.mark.usefixtures("relay", "archive")


@pytest.fixture
def alice(tmp_path: Path, auth: AuthService) -> Person:
    person = Person.new(tmp_path, auth, "alice", "Alice Liddell")
    person.signup()
    return person


@pytest.fixture
def bob(tmp_path: Path, auth: AuthService) -> Person:
    person = Person.new(tmp_path, auth, "bob", "Bob Ross")
    person.signup()
    return person


def sent_id(output: str) -> str:
    match = re.search(r"id (\S+)$", output.strip())
    assert match, output
    return match.group(1)


def test_two_people_sign_up_log_in_write_read_and_log_out(alice: Person, bob: Person):
    assert alice.login().out.startswith(f"Logged in as Alice Liddell ({alice.username})")
    assert bob.ok("whoami").out.startswith(f"Bob Ross ({bob.username}) on {bob.server}")

    # The session is private, and the password is nowhere on disk.
    assert stat.S_IMODE((alice.home / "session.json").stat().st_mode) == 0o600
    for path in alice.home.rglob("*"):
        if path.is_file():
            assert alice.password.encode() not in path.read_bytes(), path

    first = sent_id(alice.ok("send", bob.username, "Hello Bob!").out)
    second = sent_id(alice.ok("send", bob.username, "-", stdin="Line one\nline two\n").out)

    received = bob.ok("inbox", "--json").json_lines()
    assert [(m["id"], m["from"], m["to"], m["text"]) for m in received] == [
        (first, alice.username, bob.username, "Hello Bob!"),
        (second, alice.username, bob.username, "Line one\nline two"),
    ]
    assert all(m["sent_at"] for m in received)

    # Alice's client learns of bob's receipts the next time it reads its inbox.
    def delivered() -> bool:
        alice.ok("inbox")
        return [m["status"] for m in alice.ok("history", bob.username, "--json").json_lines()] == [
            "delivered",
            "delivered",
        ]

    eventually(delivered, timeout=20, interval=0.5)

    history = alice.ok("history", bob.username).out
    assert f"Alice Liddell ({alice.username}): Hello Bob!  ✓✓ delivered" in history
    reply = sent_id(bob.ok("send", alice.username, "Hi Alice").out)
    assert f"Bob Ross ({bob.username}): Hi Alice" in alice.ok("inbox").out
    both = alice.ok("history", bob.username, "--json").json_lines()
    assert [m["id"] for m in both] == [first, second, reply]
    assert [
        m["text"] for m in alice.ok("history", bob.username, "--json", "--limit", "1").json_lines()
    ] == ["Hi Alice"]
    assert [m["status"] for m in bob.ok("history", alice.username, "--json").json_lines()] == [
        "received",
        "received",
        "accepted",
    ]
    assert bob.ok("users", alice.username).out.split() == [alice.username, "Alice", "Liddell"]
    assert bob.ok("whois", alice.username, "--json").json_lines() == [
        {"username": alice.username, "display_name": "Alice Liddell"}
    ]

    # Logging out revokes the session on the server, not only here.
    kept = (alice.home / "session.json").read_bytes()
    assert alice.ok("logout").out == f"Logged out {alice.username}.\n"
    refused = alice.run("send", bob.username, "still there?")
    assert refused.code == FAILED
    assert "not logged in" in refused.error_line()
    (alice.home / "session.json").write_bytes(kept)  # a stolen copy of the revoked session

    def broker_refuses() -> bool:
        result = alice.run("inbox")
        assert result.code == FAILED, result.out
        return "refused the login" in result.error_line()

    eventually(broker_refuses, timeout=15, interval=0.5)


def test_messages_wait_for_someone_who_never_logged_in(
    alice: Person, tmp_path: Path, auth: AuthService
):
    carol = Person.new(tmp_path, auth, "carol", "Carol")
    response = httpx.post(
        f"{auth.url}/v1/users",
        timeout=30,
        json={
            "username": carol.username,
            "display_name": carol.display_name,
            "password": carol.password,
        },
    )
    assert response.status_code == 201, response.text
    texts = ["one", "two", "three"]
    for text in texts:
        alice.ok("send", carol.username, text)

    carol.login()
    lines = carol.ok("inbox").lines
    assert len(lines) == 3
    for line, text in zip(lines, texts, strict=True):
        assert line.endswith(f"] Alice Liddell ({alice.username}): {text}")
    again = carol.ok("inbox")
    assert (again.out, again.err) == ("", "")
    assert [m["text"] for m in carol.ok("history", alice.username, "--json").json_lines()] == texts


def test_error_paths_print_one_line_and_the_documented_code(
    alice: Person, bob: Person, tmp_path: Path, auth: AuthService, broker: Broker
):
    nobody = alice.run("send", "nosuchuser", "hello?")
    assert nobody.code == FAILED
    assert nobody.error_line().startswith("messenger: there is no user named 'nosuchuser'")

    invalid = alice.run("send", bob.username, "bell\x07")
    assert invalid.code == FAILED
    assert "control character U+0007" in invalid.error_line()

    wrong = Person(alice.home, alice.server, alice.username, "not-the-password", "")
    refused = wrong.run("login", alice.username, "--password-stdin", stdin="wrong-password\n")
    assert refused.code == FAILED
    assert "wrong username or password" in refused.error_line()

    taken = Person.new(tmp_path, auth, "x", "X")
    taken.username = bob.username
    conflict = taken.run("signup", bob.username, "--password-stdin", stdin="longenough\n")
    assert conflict.code == FAILED
    assert f"'{bob.username}' is taken" in conflict.error_line()

    unreachable = alice.run("--server", "http://127.0.0.1:9", "whoami")  # local state only
    assert unreachable.code == 0
    away = alice.run("--server", "http://127.0.0.1:9", "inbox")
    assert away.code == FAILED
    assert "cannot reach the server at http://127.0.0.1:9" in away.error_line()

    unknown = alice.run("users", "nosuchuser")
    assert unknown.code == FAILED
    assert "no user named 'nosuchuser'" in unknown.error_line()

    policy = f"tiny-{bob.username}"
    broker.node.ctl(
        "set_policy", "-p", VHOST, "--apply-to", "queues", "--priority", "10",
        policy, f"^{re.escape(inbox_queue(bob.username))}$",
        '{"max-length": 1, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        alice.ok("send", bob.username, "fits")
        full = alice.run("send", bob.username, "one too many")
        assert full.code == FAILED
        assert "is full; nothing was sent" in full.error_line()
        assert "Bob Ross" in full.err
    finally:
        broker.node.ctl("clear_policy", "-p", VHOST, policy)


def test_a_silent_relay_means_queued_not_lost(alice: Person, bob: Person, relay: RelayProcess):
    assert relay.process is not None
    relay.signal(signal.SIGSTOP)  # the relay holds its connection but answers nothing
    try:
        queued = alice.run("send", bob.username, "are you there, relay?")
    finally:
        relay.signal(signal.SIGCONT)
    assert queued.code == FAILED  # the pinned interface: 0 only once accepted
    line = queued.error_line()
    assert "is queued" in line and "will deliver it" in line
    statuses = [m["status"] for m in alice.ok("history", bob.username, "--json").json_lines()]
    assert statuses == ["queued"]

    received: list[dict[str, str]] = []

    def arrived() -> list[str]:
        received.extend(bob.ok("inbox", "--json").json_lines())
        return [m["text"] for m in received]

    assert eventually(arrived, timeout=20, interval=0.5) == ["are you there, relay?"]

    # The queued message was kept under the id the relay stamps, so bob's receipt finds it.
    def delivered() -> list[tuple[str, str]]:
        alice.ok("inbox")  # takes in the receipt
        mine = alice.ok("history", bob.username, "--json").json_lines()
        return [(m["id"], m["status"]) for m in mine if m["status"] == "delivered"]

    assert eventually(delivered, timeout=20, interval=0.5) == [(received[0]["id"], "delivered")]


def test_the_home_directory_is_all_there_is(alice: Person, tmp_path: Path):
    """Another MESSENGER_HOME on the same machine is another person: nothing leaks across."""
    elsewhere = Person(tmp_path / "empty", alice.server, alice.username, alice.password, "")
    assert elsewhere.run("whoami").code == FAILED
    shutil.copytree(alice.home, elsewhere.home)
    assert elsewhere.ok("whoami").out.startswith("Alice Liddell")


def test_listen_streams_until_ctrl_c(alice: Person, bob: Person):
    listening = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "listen", "--json"],
        env=bob.env(NO_COLOR="1", TERM="dumb"),
        encoding="utf-8",
        timeout=20,
    )
    try:
        for text in ("first", "second"):
            alice.ok("send", bob.username, text)
            listening.expect(r"\{.*\}\r\n")
            message = json.loads(listening.match.group(0))
            assert (message["from"], message["to"], message["text"]) == (
                alice.username,
                bob.username,
                text,
            )
        listening.sendintr()
        listening.expect(pexpect.EOF)
    finally:
        listening.close(force=True)
    assert listening.exitstatus == 0
    assert bob.ok("inbox").out == ""  # acked while listening
