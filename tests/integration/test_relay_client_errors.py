"""What the client library raises when the broker says no."""

from __future__ import annotations

import pytest

from clients.library.errors import BrokerRefused, NotConfirmed
from clients.library.messaging import MessengerConnection
from tests.integration.messaging_helpers import InboxReader, connect, meta_of, read_inbox
from tests.integration.stack import (
    AuthService,
    RelayProcess,
    eventually,
    signup_and_login,
)


def test_a_wrong_secret_is_refused_readably(auth: AuthService):
    alice = signup_and_login(auth)
    with pytest.raises(BrokerRefused) as refused:
        MessengerConnection.open(meta_of(auth), alice.username, "not-the-token")
    assert alice.username in str(refused.value)
    assert "not-the-token" not in str(refused.value)


def test_a_password_opens_a_connection_too(auth: AuthService, relay: RelayProcess):
    alice = signup_and_login(auth)
    with MessengerConnection.open(meta_of(auth), alice.username, alice.password) as connection:
        assert connection.send(alice.username, "note to self", timeout=15).status == "accepted"
    assert [m.text for m in read_inbox(auth, alice)] == ["note to self"]


def test_a_silent_relay_is_not_confirmed_but_the_message_is_kept(
    auth: AuthService, relay: RelayProcess
):
    """No relay running: the broker still confirms the publish, so the client hears
    NotConfirmed (not an error about the broker), and delivery follows once a relay runs."""
    alice, bob = signup_and_login(auth), signup_and_login(auth)
    relay.stop()
    try:
        with connect(auth, alice) as sender, pytest.raises(NotConfirmed) as silent:
            sender.send(bob.username, "are you there, relay?", timeout=1)
        assert silent.value.client_id
    finally:
        relay.start()
    with InboxReader(auth, bob) as reader:
        eventually(lambda: reader.received, timeout=30)
    [message] = reader.received
    assert message.client_id == silent.value.client_id
