"""The inbox declarer reconnects once on a failure, then reports the broker unavailable."""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest

from services.auth.errors import BrokerUnavailable
from services.auth.inboxes import BrokerInboxes


class FakeChannel:
    def __init__(self, log: list[tuple[Any, ...]], fail: bool) -> None:
        self.log = log
        self.fail = fail
        self.is_open = True

    def queue_declare(self, queue: str, durable: bool, arguments: dict[str, str]) -> None:
        if self.fail:
            raise pika.exceptions.StreamLostError("connection dropped while idle")
        self.log.append(("declare", queue, durable, arguments))

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.log.append(("bind", queue, exchange, routing_key))


class FakeConnections:
    """Stands in for pika.BlockingConnection; each new connection takes the next outcome."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = outcomes
        self.log: list[tuple[Any, ...]] = []
        self.opened = 0

    def __call__(self, parameters: Any) -> Any:
        self.opened += 1
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if outcome == "refused":
            raise pika.exceptions.AMQPConnectionError("connection refused")
        log, fail = self.log, outcome == "fails"

        class Connection:
            is_open = True

            def channel(self) -> FakeChannel:
                return FakeChannel(log, fail)

            def close(self) -> None:
                self.is_open = False

        return Connection()


def declarer(
    monkeypatch: pytest.MonkeyPatch, outcomes: list[str]
) -> tuple[BrokerInboxes, FakeConnections]:
    fake = FakeConnections(outcomes)
    monkeypatch.setattr(pika, "BlockingConnection", fake)
    return BrokerInboxes(pika.ConnectionParameters(), "quorum"), fake


def test_the_anchor_and_legacy_inbox_are_declared_durable_and_bound_by_username(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["ok"])
    inboxes.declare("alice")
    anchor = {"x-queue-type": "quorum", "x-max-length": 0, "x-overflow": "drop-head"}
    assert fake.log == [
        ("declare", "user.alice", True, anchor),
        ("bind", "user.alice", "inbox", "alice"),
        ("declare", "inbox.alice", True, {"x-queue-type": "quorum"}),
        ("bind", "inbox.alice", "inbox", "alice"),
    ]


def test_without_legacy_inboxes_only_the_anchor_is_declared(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["ok"])
    inboxes.legacy_inboxes = False
    inboxes.declare("alice")
    assert [entry[:2] for entry in fake.log] == [("declare", "user.alice"), ("bind", "user.alice")]


def test_a_device_queue_is_bounded_expires_and_gets_messages_and_carbons(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["ok"])
    queue = inboxes.declare_device("alice", "a" * 26)
    assert queue == "device.alice." + "a" * 26
    arguments = {
        "x-queue-type": "quorum",
        "x-max-length": 10_000,
        "x-overflow": "drop-head",
        "x-expires": 30 * 24 * 3600 * 1000,
    }
    assert fake.log == [
        ("declare", queue, True, arguments),
        ("bind", queue, "inbox", "alice"),
        ("bind", queue, "inbox", "alice/carbon"),
    ]


def test_the_connection_is_opened_lazily_and_reused(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["ok"])
    assert fake.opened == 0
    inboxes.declare("alice")
    inboxes.declare("bob")
    assert fake.opened == 1


def test_a_dropped_connection_is_replaced_once(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["fails", "ok"])
    inboxes.declare("alice")
    assert fake.opened == 2
    assert ("bind", "inbox.alice", "inbox", "alice") in fake.log


def test_a_broker_that_stays_down_is_reported_unavailable(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["refused", "refused", "ok"])
    with pytest.raises(BrokerUnavailable):
        inboxes.declare("alice")
    assert fake.opened == 2
    inboxes.declare("alice")  # and it recovers once the broker is back
    assert fake.log[-1] == ("bind", "inbox.alice", "inbox", "alice")
