"""The client library's errors, where no broker is needed to provoke them."""

import pytest

from clients.library.errors import BrokerUnreachable
from clients.library.messaging import MessengerConnection
from deploy.local_broker import free_port
from protocol.accounts import Meta


def test_nobody_listening_is_broker_unreachable_with_a_readable_reason():
    port = free_port()
    meta = Meta(protocol_version=1, amqp_url=f"amqp://127.0.0.1:{port}", vhost="messenger")
    with pytest.raises(BrokerUnreachable) as caught:
        MessengerConnection.open(meta, "alice", "secret")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message.lower()
    assert "secret" not in message


def test_an_unusable_broker_url_is_reported():
    meta = Meta(protocol_version=1, amqp_url="http://example.org", vhost="messenger")
    with pytest.raises(BrokerUnreachable, match="unusable broker URL"):
        MessengerConnection.open(meta, "alice", "secret")
