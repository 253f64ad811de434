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


def test_the_inbox_is_declared_durable_with_the_queue_type_and_bound_by_username(monkeypatch):
    inboxes, fake = declarer(monkeypatch, ["ok"])
    inboxes.declare("alice")
    assert fake.log == [
        ("declare", "inbox.alice", True, {"x-queue-type": "quorum"}),
        ("bind", "inbox.alice", "inbox", "alice"),
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
