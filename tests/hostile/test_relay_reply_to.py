"""Forged direct reply-to addresses: the relay answers only addresses it can prove
deliverable, so none of them closes its connection, and honest senders stay answered.

Before (issue 9), an address naming a node that does not exist made RabbitMQ crash the
relay's answer channel and close its whole connection (541): 200 such messages at 20/s
caused 21 reconnects in 10 s. Now each is relayed (the message itself is fine), not
answered, and counted in `answers_unproven`.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.hostile.relay_attack import probe, props, publish
from tests.integration.messaging_helpers import InboxReader
from tests.integration.stack import (
    AuthService,
    Broker,
    RelayProcess,
    User,
    eventually,
    signup_and_login,
)

PREFIX = "amq.rabbitmq.reply-to."


def pid_address(node: str, *, extra: bytes = b"") -> str:
    """A well-formed direct reply-to address whose pid lives on `node`."""
    name = node.encode()
    pid = bytes([131, 88, 118]) + len(name).to_bytes(2, "big") + name + bytes(12) + extra
    return PREFIX + base64.b64encode(pid).decode() + ".Zm9yZ2Vka2V5MTIzNDU2Nw=="


FORGED = {
    "unknown 3.10 node": pid_address("reply@99999999"),
    "unknown node name": pid_address("rabbit@nowhere"),
    "pid with trailing bytes": pid_address("reply@12345678", extra=b"\x00" * 7),
    "not base64": PREFIX + "!!!not-a-pid.key",
    "no pid at all": PREFIX,
}


@pytest.fixture(scope="module")
def pair(auth: AuthService) -> tuple[User, User]:
    return signup_and_login(auth, "forger"), signup_and_login(auth, "mark")


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_reply_to_never_closes_the_relays_connection(
    name: str, pair: tuple[User, User], auth: AuthService, broker: Broker, relay: RelayProcess
):
    forger, mark = pair
    before = relay.fresh_counters()
    sessions = relay.wait_consuming().lifecycle.consuming_sessions
    count = 40
    with InboxReader(auth, mark) as reader:
        messages = [
            (json.dumps({"to": mark.username, "text": f"{name} {i}"}).encode(),
             props(forger, reply_to=FORGED[name]))
            for i in range(count)
        ]  # fmt: skip
        publish(broker, forger, messages)
        # The messages themselves are fine: relayed, in order, each once.
        eventually(lambda: len(reader.received) >= count, timeout=60)
        time.sleep(0.5)
        assert [m.text for m in reader.received] == [f"{name} {i}" for i in range(count)]

    eventually(lambda: relay.counters.answers_unproven >= before.answers_unproven + count)
    status = relay.status()
    assert status is not None
    assert status.lifecycle.consuming_sessions == sessions, relay.log()[-3000:]
    assert relay.alive
    probe(auth, forger, mark)  # the forger's honest messages are answered as ever
    probe(auth, mark, forger)
