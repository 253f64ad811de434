"""Server-side conversations from the `messenger` command (#13): several devices of one
account, carbons, history from the server on a new device, read receipts, settings, the
conversation list, account deletion. Against the real broker, auth service, relay and
archive."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pika
import pytest

from clients.library.history import History
from protocol.topology import TYPE_MESSAGE, VHOST, inbox_queue
from tests.integration.cli_driver import COMMAND, Person
from tests.integration.stack import (
    AuthService,
    Broker,
    eventually,
)

pytestmark = pytest.mark.usefixtures("relay", "archive")


def device(person: Person, tmp_path: Path, name: str) -> Person:
    """Another device of `person`: a home of its own, logged in as the same user."""
    other = Person(tmp_path / f"{person.username}-{name}", person.server, person.username,
                   person.password, person.display_name)  # fmt: skip
    other.login()
    return other


@pytest.fixture
def alice(tmp_path: Path, auth: AuthService) -> Person:
    return Person.signed_up(tmp_path, auth, "alice", "Alice Liddell")


@pytest.fixture
def bob(tmp_path: Path, auth: AuthService) -> Person:
    return Person.signed_up(tmp_path, auth, "bob", "Bob Ross")


class Listener:
    """`messenger listen --json` as a process of its own, its lines read as they come."""

    def __init__(self, person: Person) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, "listen", "--json"],
            env=person.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.rows: list[dict[str, object]] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def read_until(self, count: int, timeout: float = 60) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while len(self.rows) < count and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self.rows.append(json.loads(self._lines.get(timeout=0.5)))
        return self.rows

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        with self.process.stderr:
            return self.process.stderr.read()


def test_two_listening_devices_of_one_account_both_get_every_message_once(
    alice: Person, bob: Person, tmp_path: Path
):
    laptop = alice
    phone = device(alice, tmp_path, "phone")
    listeners = [Listener(laptop), Listener(phone)]
    try:
        time.sleep(1)  # both subscribed (a message before that waits in the queue anyway)
        texts = [f"message {n}" for n in range(20)]
        for text in texts:
            bob.ok("send", alice.username, text)
        for listener in listeners:
            rows = listener.read_until(len(texts))
            assert [r["text"] for r in rows] == texts  # every one, once, in order
    finally:
        errors = [listener.stop() for listener in listeners]
    assert all("Traceback" not in err for err in errors), errors
    for listener in listeners:
        assert listener.process.returncode == 0
        assert len({r["id"] for r in listener.rows}) == 20


def test_what_i_send_from_one_device_shows_on_my_other_one(
    alice: Person, bob: Person, tmp_path: Path
):
    phone = device(alice, tmp_path, "phone")
    sent = alice.ok("send", bob.username, "Lunch at noon?", "--json").json_lines()[0]

    def carbon() -> list[dict[str, object]]:
        return phone.ok("inbox", "--json").json_lines()

    rows = eventually(carbon, timeout=20, interval=0.5)
    assert [(r["id"], r["from"], r["to"], r["text"]) for r in rows] == [
        (sent["id"], alice.username, bob.username, "Lunch at noon?")
    ]
    assert rows[0]["status"] in ("accepted", "delivered")
    # Shown as sent by me, naming whom it went to.
    bob.ok("send", alice.username, "Sure")
    human = phone.ok("inbox").out
    assert f"Bob Ross ({bob.username}): Sure" in human
    assert phone.ok("inbox").out == ""  # each once
    # The sending device took its own carbon in without showing it again.
    assert [r["text"] for r in alice.ok("inbox", "--json").json_lines()] == ["Sure"]
    history = phone.ok("history", bob.username, "--json").json_lines()
    assert [(r["from"], r["text"]) for r in history] == [
        (alice.username, "Lunch at noon?"),
        (bob.username, "Sure"),
    ]
    # Human output of a carbon: from me, to whom.
    alice.ok("send", bob.username, "See you")
    line = eventually(lambda: phone.ok("inbox").out, timeout=20, interval=0.5)
    assert f"Alice Liddell ({alice.username}) → Bob Ross ({bob.username}): See you" in line


def test_a_new_device_pages_through_the_whole_history(alice: Person, bob: Person, tmp_path: Path):
    count = 230  # more than one page of 200
    for n in range(count):
        sender, to = (alice, bob) if n % 2 == 0 else (bob, alice)
        sender.ok("send", to.username, f"#{n}")
    fresh = device(alice, tmp_path, "new-laptop")

    def everything() -> list[dict[str, object]]:
        rows = fresh.ok("history", bob.username, "--json").json_lines()
        assert len(rows) == count, len(rows)
        return rows

    rows = eventually(everything, timeout=60, interval=1)
    assert [r["text"] for r in rows] == [f"#{n}" for n in range(count)]
    assert len({r["id"] for r in rows}) == count
    # The last ones are in the new device's queue too: `inbox` shows nothing twice.
    assert fresh.ok("inbox", "--json").json_lines() == []
    again = fresh.ok("history", bob.username, "--json", "--limit", "5").json_lines()
    assert [r["text"] for r in again] == [f"#{n}" for n in range(count - 5, count)]


def test_read_receipts_reach_the_sender_and_the_readers_other_device(
    alice: Person, bob: Person, tmp_path: Path
):
    phone = device(alice, tmp_path, "phone")
    first = bob.ok("send", alice.username, "one", "--json").json_lines()[0]["id"]
    second = bob.ok("send", alice.username, "two", "--json").json_lines()[0]["id"]
    assert "two" in alice.ok("inbox").out  # shown to a person: read

    def statuses() -> list[object]:
        bob.ok("inbox")
        return [r["status"] for r in bob.ok("history", alice.username, "--json").json_lines()]

    eventually(lambda: statuses() == ["read", "read"], timeout=30, interval=0.5)
    assert "✓✓ read" in bob.ok("history", alice.username).out

    # The phone takes in both messages and learns they were read on the laptop.
    phone.ok("inbox", "--json")

    def read_on_phone() -> bool:
        phone.ok("inbox", "--json")
        with History(
            phone.home / "users" / alice.username / "history.sqlite3", alice.username
        ) as h:
            return all(m is not None and m.read for m in (h.get(first), h.get(second)))

    eventually(read_on_phone, timeout=30, interval=0.5)
    summaries = alice.ok("conversations", "--json").json_lines()
    assert [(s["peer"], s["unread"]) for s in summaries] == [(bob.username, 0)]

    # Turned off: bob no longer learns it; alice's devices still count it read.
    assert "off" in alice.ok("settings", "read-receipts", "off").out
    assert alice.ok("settings", "--json").json_lines() == [{"read_receipts": False}]
    bob.ok("send", alice.username, "three")
    assert "three" in eventually(lambda: alice.ok("inbox").out, timeout=20, interval=0.5)

    def conversation_read() -> bool:
        return bool(alice.ok("conversations", "--json").json_lines()[0]["unread"] == 0)

    eventually(conversation_read, timeout=30, interval=0.5)
    bob.ok("inbox")
    assert statuses() == ["read", "read", "delivered"]


def test_conversations_newest_first_with_unread_counts(
    alice: Person, bob: Person, tmp_path: Path, auth: AuthService
):
    carol = Person.signed_up(tmp_path, auth, "carol", "Carol")
    bob.ok("send", alice.username, "from bob 1")
    bob.ok("send", alice.username, "from bob 2")
    carol.ok("send", alice.username, "from carol")
    alice.ok("send", bob.username, "to bob")  # bob's conversation is the newest again

    def listed() -> list[dict[str, object]]:
        rows = alice.ok("conversations", "--json").json_lines()
        assert [r["peer"] for r in rows] == [bob.username, carol.username]
        return rows

    rows = eventually(listed, timeout=30, interval=0.5)
    assert [(r["display_name"], r["unread"]) for r in rows] == [("Bob Ross", 2), ("Carol", 1)]
    last = rows[0]["last_message"]
    assert isinstance(last, dict) and (last["from"], last["text"]) == (alice.username, "to bob")
    human = alice.ok("conversations").lines
    assert f"Bob Ross ({bob.username}) · 2 unread · you: to bob" in human[0]


def test_account_delete_removes_it_here_and_holds_the_name(
    alice: Person, bob: Person, tmp_path: Path
):
    alice.ok("send", bob.username, "goodbye")
    bob.ok("inbox")
    wrong = alice.run("account", "delete", "--password-stdin", stdin="not the password\n")
    assert wrong.code == 1 and "wrong password" in wrong.error_line()
    assert (alice.home / "session.json").exists()

    gone = alice.ok("account", "delete", "--password-stdin", stdin=alice.password + "\n")
    assert f"Deleted the account {alice.username}" in gone.out
    assert not (alice.home / "session.json").exists()
    assert not (alice.home / "users" / alice.username).exists()
    again = alice.run(
        "signup", alice.username, "--display-name", "Impostor", "--password-stdin",
        stdin="another password\n",
    )  # fmt: skip
    assert again.code == 1 and "cannot be taken yet" in again.error_line()
    # What alice sent stays with bob, shown as from a deleted user.
    history = bob.ok("history", alice.username).out
    assert "goodbye" in history and f"deleted user ({alice.username})" in history


def test_a_device_whose_queue_is_gone_catches_up_from_the_archive(
    alice: Person, bob: Person, broker: Broker
):
    queue = json.loads((alice.home / "session.json").read_text())["device_queue"]
    assert queue.startswith(f"device.{alice.username}.")
    alice.ok("inbox")
    # The queue expires while the device is away (x-expires), as if: an operator deletes it.
    broker.node.ctl("delete_queue", queue, "-p", VHOST)
    texts = ["while away 1", "while away 2"]
    for text in texts:
        bob.ok("send", alice.username, text)  # still accepted: the user exists

    def caught_up() -> list[object]:
        return [r["text"] for r in alice.ok("inbox", "--json").json_lines()]

    assert eventually(caught_up, timeout=30, interval=1) == texts
    # The queue is back, and live delivery goes on through it.
    bob.ok("send", alice.username, "back live")
    assert eventually(caught_up, timeout=30, interval=1) == ["back live"]


def test_chat_on_a_new_device_opens_with_the_server_history_and_shows_carbons_and_reads(
    alice: Person, bob: Person, tmp_path: Path
):
    bob.ok("send", alice.username, "from before this device")
    phone = device(alice, tmp_path, "phone")  # knows nothing locally
    env = phone.env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1")
    chat = pexpect.spawn(
        sys.executable,
        [*COMMAND[1:], "chat", bob.username],
        env=env,
        encoding="utf-8",
        dimensions=(30, 120),
        timeout=30,
    )
    log = (tmp_path / "chat.log").open("w")
    chat.logfile_read = log
    try:
        chat.expect_exact(f"Bob Ross ({bob.username}): from before this device")  # the server's
        chat.expect_exact(f"Chat with Bob Ross ({bob.username})")
        alice.ok("send", bob.username, "from the laptop")  # another device of the same user
        chat.expect_exact(f"Alice Liddell ({alice.username}): from the laptop")
        assert "from the laptop" in bob.ok("inbox").out  # bob sees it: read
        chat.expect_exact("✓✓ read: from the laptop")
        chat.sendline("/quit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)
        log.close()
    assert chat.exitstatus == 0, (tmp_path / "chat.log").read_text()
    # What the chat showed was marked read: bob sees his message read.
    bob.ok("inbox")
    statuses = bob.ok("history", alice.username, "--json").json_lines()
    assert (statuses[0]["text"], statuses[0]["status"]) == ("from before this device", "read")


def test_what_waits_in_a_legacy_inbox_is_drained_once(alice: Person, broker: Broker):
    # A message from before devices: only in `inbox.<alice>`, put there as the relay did.
    body = json.dumps(
        {"id": "01a20000-0000-8000-8000-000000000001", "from": "bob0legacy", "to": alice.username,
         "text": "from the old days", "sent_at": "2026-11-01T10:00:00+00:00"}
    ).encode()  # fmt: skip
    connection = pika.BlockingConnection(broker.params("relay", broker.service_passwords["relay"]))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "", inbox_queue(alice.username), body,
            pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, type=TYPE_MESSAGE),
            mandatory=True,
        )  # fmt: skip
    finally:
        connection.close()
    rows = alice.ok("inbox", "--json").json_lines()
    assert [r["text"] for r in rows] == ["from the old days"]
    assert alice.ok("inbox", "--json").json_lines() == []
    assert broker.queue_depths().get(inbox_queue(alice.username), 0) == 0


def test_a_new_device_shows_what_nobody_has_read_yet(alice: Person, bob: Person, tmp_path: Path):
    bob.ok("send", alice.username, "read on the laptop")
    assert "read on the laptop" in alice.ok("inbox").out
    texts = ["unread 1", "unread 2"]
    for text in texts:
        bob.ok("send", alice.username, text)  # the laptop is off now

    def archived_unread() -> bool:
        rows = alice.ok("conversations", "--json").json_lines()
        return bool(rows and rows[0]["unread"] == 2)

    eventually(archived_unread, timeout=30, interval=0.5)
    phone = device(alice, tmp_path, "phone")  # its queue is younger than those messages
    assert [r["text"] for r in phone.ok("inbox", "--json").json_lines()] == texts
    assert phone.ok("inbox", "--json").json_lines() == []
    history = phone.ok("history", bob.username, "--json").json_lines()
    assert [r["text"] for r in history] == ["read on the laptop", *texts]
