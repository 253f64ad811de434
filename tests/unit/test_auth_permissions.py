"""The broker permission model: read own inbox, write outbox, nothing else."""

import pytest

from protocol.topology import device_queue, new_device_id
from services.auth.permissions import (
    may_log_in_as,
    resource_allowed,
    topic_allowed,
    vhost_allowed,
)

VHOST = "messenger"


def allowed(resource: str, name: str, permission: str, username: str = "alice", vhost: str = VHOST):
    return resource_allowed(username, vhost, resource, name, permission, allowed_vhost=VHOST)


def test_a_user_may_read_its_own_inbox():
    assert allowed("queue", "inbox.alice", "read")


def test_a_user_may_read_its_own_device_queues():
    assert allowed("queue", device_queue("alice", new_device_id()), "read")


@pytest.mark.parametrize(
    "name",
    [
        "device.bob." + "a" * 26,  # somebody else's device
        "device.alice." + "a" * 25,  # not a device id
        "device.alice." + "A" * 26,
        "device.alice.x." + "a" * 26,  # the device of a user named alice.x
        "device.alice.",
        "user.alice",  # the anchor holds nothing and is nobody's to read
        "user.bob",
        "archive.ingest",
    ],
)
def test_no_other_queue_of_the_new_topology_may_be_read(name):
    assert not allowed("queue", name, "read")
    assert not allowed("queue", name, "configure")
    assert not allowed("queue", name, "write")


def test_a_user_may_write_to_the_outbox_exchange():
    assert allowed("exchange", "outbox", "write")


@pytest.mark.parametrize(
    ("resource", "name", "permission"),
    [
        ("queue", "inbox.bob", "read"),  # somebody else's inbox
        ("queue", "inbox.alice", "write"),  # binding to own inbox
        ("queue", "inbox.alice", "configure"),  # declaring or deleting own inbox
        ("queue", "inbox.alice.x", "read"),
        ("queue", "inbox.alic", "read"),
        ("queue", "inboxalice", "read"),
        ("queue", "relay.outbox.0", "read"),
        ("queue", "relay.dead", "read"),
        ("queue", "amq.gen-abc", "configure"),
        ("exchange", "outbox", "read"),  # binding from the outbox
        ("exchange", "outbox", "configure"),
        ("exchange", "inbox", "write"),  # bypassing the relay
        ("exchange", "amq.default", "write"),
        ("exchange", "", "write"),
        ("exchange", "relay.dead", "write"),
        ("exchange", "archive", "write"),  # forging history
        ("exchange", "amq.topic", "write"),
        ("exchange", "inbox.alice", "write"),
        ("topic", "outbox", "write"),
        ("queue", "outbox", "write"),  # right name, wrong kind
        ("exchange", "inbox.alice", "read"),  # right name, wrong kind
    ],
)
def test_everything_else_is_denied(resource, name, permission):
    assert not allowed(resource, name, permission)


def test_permissions_hold_only_in_the_configured_vhost():
    assert not allowed("queue", "inbox.alice", "read", vhost="/")
    assert not allowed("exchange", "outbox", "write", vhost="other")


@pytest.mark.parametrize(
    "username", ["relay", "auth", "archive", "guest", "admin", "system", "Alice", "", "../x"]
)
def test_reserved_or_malformed_names_get_nothing(username):
    assert not may_log_in_as(username)
    assert not vhost_allowed(username, VHOST, VHOST)
    assert not allowed("queue", f"inbox.{username}", "read", username=username)
    assert not allowed("exchange", "outbox", "write", username=username)


def test_vhost_access_is_only_the_configured_vhost():
    assert vhost_allowed("alice", VHOST, VHOST)
    assert not vhost_allowed("alice", "/", VHOST)


def test_topic_permissions_are_always_denied():
    assert not topic_allowed()
