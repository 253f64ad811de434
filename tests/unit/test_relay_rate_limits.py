"""The relay's token buckets (services/relay/rate_limits.py), on a clock of our own."""

from __future__ import annotations

from services.relay.rate_limits import SWEEP_INTERVAL_SECONDS, Buckets, Limit, Rate, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, sender=(10.0, 5), recipient=(2.0, 3), receipts=(100.0, 50)) -> RateLimits:
    return RateLimits(
        sender=Rate(*sender), recipient=Rate(*recipient), receipts=Rate(*receipts), clock=clock
    )


def test_a_burst_is_allowed_then_the_rate():
    clock = Clock()
    rl = limits(clock)
    assert [rl.allow_sender("a", receipt=False) for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1  # one token at 10/s
    assert rl.allow_sender("a", receipt=False)
    assert not rl.allow_sender("a", receipt=False)
    clock.now += 10  # never more than the burst saved up
    assert sum(rl.allow_sender("a", receipt=False) for _ in range(10)) == 5


def test_senders_and_pairs_and_receipts_have_buckets_of_their_own():
    clock = Clock()
    rl = limits(clock)
    for _ in range(5):
        assert rl.allow_sender("flooder", receipt=False)
    assert not rl.allow_sender("flooder", receipt=False)
    assert rl.allow_sender("someone else", receipt=False)
    assert rl.allow_sender("flooder", receipt=True)  # reading a backlog is not sending
    assert [rl.allow_pair("a", "victim") for _ in range(4)] == [True] * 3 + [False]
    assert rl.allow_pair("a", "another") and rl.allow_pair("b", "victim")


def test_a_rate_of_zero_is_no_limit():
    clock = Clock()
    rl = limits(clock, sender=(0, 1), recipient=(0, 1))
    assert all(rl.allow_sender("a", receipt=False) for _ in range(10_000))
    assert all(rl.allow_pair("a", "b") for _ in range(10_000))


def test_refilled_buckets_are_forgotten():
    clock = Clock()
    buckets = Buckets(Rate(10.0, 5))
    for name in ("a", "b", "c"):
        buckets.take(name, clock.now)
    clock.now += 0.1
    buckets.take("c", clock.now)
    buckets.sweep(clock.now + 0.45)  # a and b are full again, c is not
    assert len(buckets) == 1
    rl = limits(clock)
    rl.allow_sender("x", receipt=False)
    clock.now += SWEEP_INTERVAL_SECONDS + 1
    rl.allow_sender("y", receipt=False)  # the sweep ran: only y is left
    assert len(rl._senders) == 1


def test_the_detail_says_what_the_limit_is():
    rl = limits(Clock())
    assert rl.describe(Limit.SENDER) == "more than 10 messages a second (after a burst of 5)"
    assert "to bob" in rl.describe(Limit.RECIPIENT, "bob")


def test_a_flood_hears_about_its_first_refusals_only():
    clock = Clock()
    rl = limits(clock)
    answered = sum(rl.answer_refusal("flooder") for _ in range(5000))
    assert answered == 1000  # REFUSAL_ANSWERS' burst; the rest is acked unanswered
    assert rl.answer_refusal("someone else")
