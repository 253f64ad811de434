"""A client that dies between receiving a message and acking it loses and doubles nothing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from clients.cli.receiving import DIE_AT_ENV
from tests.integration.cli_driver import Person
from tests.integration.stack import AuthService, Broker, eventually

pytestmark = pytest.mark.usefixtures("relay", "archive")


@pytest.mark.parametrize(
    ("dies_after", "shown_before_dying"),
    [("stored", False), ("shown", True)],
    ids=["killed-after-storing", "killed-after-showing"],
)
def test_a_client_killed_before_its_ack_shows_the_message_once(
    tmp_path: Path, auth: AuthService, broker: Broker, dies_after: str, shown_before_dying: bool
):
    alice = Person.signed_up(tmp_path, auth, "alice", "Alice")
    bob = Person.signed_up(tmp_path, auth, "bob", "Bob")
    bob.ok("inbox")  # bob's device has caught up: what follows comes through its queue
    alice.ok("send", bob.username, "survive this")

    # A real process, SIGKILLed by the test hook after storing (or showing), before the ack.
    killed = bob.spawn("inbox", "--json", **{DIE_AT_ENV: dies_after})
    assert killed.code == -signal.SIGKILL, killed.err
    first_run = [m["text"] for m in killed.json_lines()]
    assert first_run == (["survive this"] if shown_before_dying else [])
    queue = json.loads((bob.home / "session.json").read_text())["device_queue"]
    eventually(lambda: broker.queue_depths().get(queue) == 1)  # not acked: still there

    second_run = [m["text"] for m in bob.ok("inbox", "--json").json_lines()]
    assert first_run + second_run == ["survive this"]  # seen exactly once in all
    assert [m["text"] for m in bob.ok("history", alice.username, "--json").json_lines()] == [
        "survive this"
    ]
    assert bob.ok("inbox", "--json").out == ""
