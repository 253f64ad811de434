"""What a person reads while a client is offline: few lines, true ones, no pika tuples."""

from __future__ import annotations

import pika.exceptions

from clients.library.errors import LoginUnchecked
from clients.library.outage import Outage, duration, reason


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def outage() -> tuple[Outage, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    return Outage(lines.append, clock), lines, clock


def test_one_line_when_it_goes_none_per_attempt_one_when_it_is_back():
    watched, lines, clock = outage()
    assert not watched.offline
    for _ in range(20):  # twenty attempts, a second apart
        watched.failed("the server at h:1 does not answer", 1.0)
        clock.now += 1
    assert watched.offline
    watched.recovered()
    assert lines == [
        "offline: the server at h:1 does not answer; trying again in 1 s",
        "back online after 20 s",
    ]
    assert not watched.offline
    watched.recovered()  # nothing to say twice
    assert len(lines) == 2


def test_a_new_cause_and_a_long_outage_are_told():
    watched, lines, clock = outage()
    watched.failed("the server at h:1 does not answer", 0.5)
    clock.now += 5
    watched.failed("the server at h:1 cannot check logins right now", 1.0)
    clock.now += 30
    watched.failed("the server at h:1 cannot check logins right now", 1.0)
    clock.now += 1
    watched.failed("the server at h:1 cannot check logins right now", 1.0)
    assert lines == [
        "offline: the server at h:1 does not answer; trying again in 0.5 s",
        "still offline: the server at h:1 cannot check logins right now; trying again in 1 s",
        "still offline after 35 s: the server at h:1 cannot check logins right now;"
        " trying again in 1 s",
    ]


def test_reasons_are_words_not_reply_tuples():
    forced = pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown")
    assert reason(forced, "h:1") == "the server at h:1 is shutting down"
    lost = pika.exceptions.StreamLostError("Transport indicated EOF")
    assert reason(lost, "h:1") == "lost the connection to the server at h:1"
    refused = pika.exceptions.AMQPConnectionError(ConnectionRefusedError(111, "refused"))
    assert reason(refused, "h:1") == "the server at h:1 does not answer (connection refused)"
    unchecked = LoginUnchecked("the server at h:1 cannot check logins right now (why)")
    assert "cannot check logins" in reason(unchecked, "h:1")
    assert "(" not in reason(pika.exceptions.AMQPConnectionError(TimeoutError()), "h:1")


def test_durations_read_like_a_person_says_them():
    assert [duration(s) for s in (0.44, 12.4, 185, 7800)] == [
        "0.4 s",
        "12 s",
        "3 min 5 s",
        "2 h 10 min",
    ]
