"""`messenger chat` in a pseudo-terminal: messages arrive without breaking the line typed."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from tests.integration.cli_driver import COMMAND, Person
from tests.integration.stack import AuthService

pytestmark = pytest.mark.usefixtures("relay", "archive")


def test_a_message_arrives_while_half_a_line_is_typed(tmp_path: Path, auth: AuthService):
    alice = Person.signed_up(tmp_path, auth, "alice", "Alice Liddell")
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob Ross")
    alice.ok("send", bob.username, "from before the chat")

    env = alice.env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
    env.pop("NO_COLOR", None)
    chat = pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], "chat", bob.username],
        env=env,
        encoding="utf-8",
        dimensions=(30, 120),
        timeout=20,
    )
    log = (tmp_path / "chat.log").open("w")
    chat.logfile_read = log
    try:
        chat.expect_exact("from before the chat")  # the history comes first
        chat.expect_exact(f"Chat with Bob Ross ({bob.username})")
        chat.expect_exact("› ")  # noqa: RUF001 - the prompt
        chat.send("half a li")
        chat.expect_exact("half a li")

        bob.ok("send", alice.username, "hello from bob")
        chat.expect_exact("hello from bob")  # printed above the prompt...
        chat.expect_exact("half a li")  # ...which is drawn again with the half line intact

        chat.send("ne\r")
        chat.expect_exact("half a line")
        chat.expect_exact("✓ accepted")  # accepted by the server
        assert [m["text"] for m in bob.ok("inbox", "--json").json_lines()] == [
            "from before the chat",
            "half a line",
        ]
        chat.expect_exact("✓✓ delivered: half a line")  # bob's receipt came back

        chat.sendcontrol("d")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)
        log.close()
    assert chat.exitstatus == 0, (tmp_path / "chat.log").read_text()

    conversation = alice.ok("history", bob.username, "--json").json_lines()
    assert [(m["text"], m["status"]) for m in conversation] == [
        ("from before the chat", "delivered"),
        ("hello from bob", "received"),
        ("half a line", "delivered"),
    ]


def test_quit_leaves_the_chat(tmp_path: Path, auth: AuthService):
    alice = Person.signed_up(tmp_path, auth, "alice", "Alice")
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob")
    env = alice.env(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1")
    chat = pexpect.spawn(
        sys.executable,
        [*COMMAND[1:], "chat", bob.username],
        env=env,
        encoding="utf-8",
        dimensions=(24, 100),
        timeout=20,
    )
    try:
        chat.expect_exact("Chat with")
        chat.sendline("/quit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)
    assert chat.exitstatus == 0
