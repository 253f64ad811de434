"""Small things a person notices: `whoami --json`, the history of nobody, notes to self, and
chat commands that are never sent."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.integration.cli_driver import COMMAND, Person
from tests.integration.stack import AuthService

pytestmark = pytest.mark.usefixtures("relay", "archive")


@pytest.fixture
def alice(tmp_path: Path, auth: AuthService) -> Person:
    return Person.signed_up(tmp_path, auth, "alice", "Alice Liddell")


def test_whoami_json_is_one_object(alice: Person):
    (me,) = alice.ok("whoami", "--json").json_lines()
    assert me["username"] == alice.username and me["display_name"] == "Alice Liddell"
    assert me["server"] == alice.server and me["expires_at"].endswith("+00:00")


def test_the_history_of_nobody_says_there_is_no_such_user(alice: Person):
    result = alice.run("history", "nobody")
    assert result.code == 1 and result.out == ""
    assert "there is no user named 'nobody'" in result.error_line()


def test_an_empty_conversation_says_so_and_succeeds(alice: Person, tmp_path: Path, auth):
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob")
    result = alice.run("history", bob.username)
    assert (result.code, result.out) == (0, "")
    assert result.error_line() == f"No messages with {bob.username} yet."
    assert alice.run("history", bob.username, "--json").out == ""


def test_a_note_to_self_is_one_message_shown_once(alice: Person):
    sent = alice.ok("send", alice.username, "buy milk")
    assert sent.out.startswith("✓ Sent to yourself at ")
    (note,) = alice.ok("inbox", "--json").json_lines()
    assert (note["from"], note["to"], note["text"]) == (alice.username, alice.username, "buy milk")
    assert note["status"] == "delivered"
    assert alice.ok("inbox", "--json").out == ""  # shown once
    history = alice.ok("history", alice.username, "--json").json_lines()
    assert [(m["text"], m["status"]) for m in history] == [("buy milk", "delivered")]


@contextlib.contextmanager
def chatting(person: Person, peer: str, log: Path) -> Iterator[pexpect.spawn]:
    """`messenger chat PEER` in a pseudo-terminal; what it printed ends up in `log`."""
    env = person.env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1")
    with log.open("w") as screen:
        chat = pexpect.spawn(
            sys.executable,
            [*COMMAND[1:], "chat", peer],
            env=env,
            encoding="utf-8",
            dimensions=(30, 120),
            timeout=20,
        )
        chat.logfile_read = screen
        try:
            chat.expect_exact("Chat with")
            yield chat
            chat.sendline("/quit")
            chat.expect(pexpect.EOF)
        finally:
            chat.close(force=True)
    assert chat.exitstatus == 0, log.read_text()


def test_an_unknown_chat_command_is_answered_and_never_sent(
    alice: Person, tmp_path: Path, auth: AuthService
):
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob")
    with chatting(alice, bob.username, tmp_path / "chat.log") as chat:
        chat.sendline("/qiut")
        chat.expect_exact("no command /qiut; nothing was sent")
        chat.expect_exact("/quit or Ctrl-D leaves · /help shows this")  # the commands
        chat.sendline("//slash first")
        chat.expect_exact("/slash first  ✓ accepted")
    assert [m["text"] for m in bob.ok("inbox", "--json").json_lines()] == ["/slash first"]


def test_a_chat_with_yourself_shows_each_line_once(alice: Person, tmp_path: Path):
    log = tmp_path / "chat.log"
    with chatting(alice, alice.username, log) as chat:
        for text in ("note one", "note two"):
            chat.sendline(text)
            chat.expect(f"\\): {text}  ✓")  # shown, sent or already delivered
        time.sleep(1)  # time for a second showing, if there were one
    shown = [line for line in log.read_text().splitlines() if "): note one" in line]
    assert len(shown) == 1, log.read_text()
    assert alice.ok("inbox", "--json").out == ""  # seen in the chat: not again in inbox
    history = alice.ok("history", alice.username, "--json").json_lines()
    assert [m["text"] for m in history] == ["note one", "note two"]
