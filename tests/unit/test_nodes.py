"""Broker node lists: parsing the settings, the order nodes are tried in, what clients get."""

import pytest
from pydantic import SecretStr, ValidationError

from broker.nodes import NodeRotation, parse_amqp_url, parse_nodes
from protocol.accounts import Meta
from services.auth.settings import AuthSettings
from services.relay.settings import RelaySettings


def test_a_node_list_is_comma_separated_host_port_with_the_amqp_port_as_default():
    assert parse_nodes("a:5672, b , [::1]:5673,a:5672,") == [
        ("a", 5672),
        ("b", 5672),
        ("::1", 5673),
    ]


@pytest.mark.parametrize("text", ["a:x", "a:0", ":5672", "::1", "[::1", "a:99999"])
def test_a_malformed_node_is_refused_with_the_entry_named(text):
    with pytest.raises(ValueError, match="broker node"):
        parse_nodes(text)


def test_an_amqp_url_gives_host_and_port_and_anything_else_is_refused():
    assert parse_amqp_url("amqp://broker-2:5673") == ("broker-2", 5673)
    assert parse_amqp_url("amqp://broker/") == ("broker", 5672)
    for url in ("http://example.org", "amqp://", "amqp://h:port"):
        with pytest.raises(ValueError, match="unusable broker URL"):
            parse_amqp_url(url)


def test_rotation_moves_on_at_once_until_every_node_failed_then_backs_off():
    nodes = NodeRotation(["a", "b", "c"], max_delay=2.0)
    assert nodes.current == "a"
    assert [nodes.failed(), nodes.current] == [0.0, "b"]
    assert [nodes.failed(), nodes.current] == [0.0, "c"]
    assert not nodes.round_failed
    assert [nodes.failed(), nodes.current] == [0.5, "a"]  # a whole round failed
    assert nodes.round_failed
    assert [nodes.failed() for _ in range(3)] == [1.0, 2.0, 2.0]
    nodes.succeeded()
    current = nodes.current
    assert nodes.failed() == 0.0 and nodes.current != current  # a lost node: next one now


def test_a_single_node_is_retried_with_backoff():
    nodes = NodeRotation(["only"], max_delay=10.0)
    assert [nodes.failed(), nodes.failed(), nodes.current] == [0.5, 1.0, "only"]


def test_relay_and_auth_take_a_node_list_from_the_environment(monkeypatch):
    monkeypatch.setenv("MESSENGER_RELAY_AMQP_NODES", "n1:5672,n2:5673")
    monkeypatch.setenv("MESSENGER_AUTH_AMQP_NODES", "n1,n2:5673")
    monkeypatch.setenv("MESSENGER_AUTH_PUBLIC_AMQP_URLS", "amqp://pub:5672, amqp://pub:5673")
    relay = RelaySettings(amqp_password=SecretStr("x"))
    auth = AuthSettings(amqp_password=SecretStr("x"))
    assert relay.broker_nodes() == auth.broker_nodes() == [("n1", 5672), ("n2", 5673)]
    assert auth.client_amqp_urls() == ["amqp://pub:5672", "amqp://pub:5673"]


def test_without_a_node_list_the_single_host_and_url_are_used(monkeypatch):
    for name in ("MESSENGER_RELAY_AMQP_NODES", "MESSENGER_AUTH_AMQP_NODES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MESSENGER_AUTH_PUBLIC_AMQP_URLS", "")
    relay = RelaySettings(amqp_password=SecretStr("x"), amqp_host="h", amqp_port=1)
    auth = AuthSettings(amqp_password=SecretStr("x"), public_amqp_url="amqp://p:2")
    assert relay.broker_nodes() == [("h", 1)]
    assert auth.client_amqp_urls() == ["amqp://p:2"]


def test_a_bad_public_url_is_a_settings_error(monkeypatch):
    monkeypatch.setenv("MESSENGER_AUTH_PUBLIC_AMQP_URLS", "amqp://ok,http://no")
    with pytest.raises(ValidationError, match="unusable broker URL"):
        AuthSettings(amqp_password=SecretStr("x"))


def test_meta_from_an_older_server_has_one_url_and_older_clients_ignore_the_list():
    old = Meta.model_validate({"protocol_version": 1, "amqp_url": "amqp://a", "vhost": "v"})
    assert old.broker_urls() == ["amqp://a"]
    new = Meta(
        protocol_version=1, amqp_url="amqp://a", amqp_urls=["amqp://a", "amqp://b"], vhost="v"
    )
    assert new.broker_urls() == ["amqp://a", "amqp://b"]
    assert new.model_dump()["amqp_url"] == "amqp://a"
