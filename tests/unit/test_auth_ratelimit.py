"""The failed-login limiter: pair delays, known addresses, stranger budgets, a token bucket."""

import pytest

from services.auth.ratelimit import (
    KnownAddresses,
    LoginLimiter,
    PairThrottle,
    SlidingWindow,
    TokenBucket,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_key_is_not_limited_below_the_limit(clock):
    window = SlidingWindow(limit=3, window_seconds=60, clock=clock)
    window.record("alice")
    window.record("alice")
    assert window.retry_after("alice") is None


def test_a_key_is_limited_at_the_limit_until_its_oldest_failure_leaves_the_window(clock):
    window = SlidingWindow(limit=3, window_seconds=60, clock=clock)
    for step in range(3):
        clock.now = 1000.0 + step * 10
        window.record("alice")
    clock.now = 1025.0
    assert window.retry_after("alice") == pytest.approx(35.0)  # first failure at 1000 + 60
    clock.now = 1060.0
    assert window.retry_after("alice") is None


def test_keys_are_limited_independently(clock):
    window = SlidingWindow(limit=1, window_seconds=60, clock=clock)
    window.record("alice")
    assert window.retry_after("alice") is not None
    assert window.retry_after("bob") is None


def test_failures_older_than_the_window_are_forgotten(clock):
    window = SlidingWindow(limit=2, window_seconds=60, clock=clock)
    window.record("alice")
    clock.now += 61
    window.record("alice")
    assert window.retry_after("alice") is None
    assert len(window) == 1


def test_a_flood_of_distinct_keys_does_not_grow_memory_without_bound(clock):
    window = SlidingWindow(limit=5, window_seconds=60, clock=clock, max_keys=100)
    for i in range(1000):
        window.record(f"user{i}")
    assert len(window) <= 100


def limiter(clock, per_user: int = 10, per_address: int = 50) -> LoginLimiter:
    return LoginLimiter.create(
        per_user, per_address, window_seconds=300, clock=clock,
        free_failures=2, base_delay=1.0, max_delay=60.0,
    )  # fmt: skip


def test_a_pair_delay_doubles_after_the_free_failures_up_to_the_cap():
    throttle = PairThrottle(free_failures=2, base_delay=1.0, max_delay=8.0, forget_seconds=900)
    assert [throttle.delay_after(n) for n in range(8)] == [0, 0, 0, 1, 2, 4, 8, 8]


def test_a_pair_waits_its_delay_after_its_last_failure_and_a_success_clears_it(clock):
    lim = limiter(clock)
    for _ in range(4):  # 2 free, then 1 s, then 2 s
        lim.record_failure("alice", "10.0.0.1")
    assert lim.retry_after("alice", "10.0.0.1") == 2
    assert lim.retry_after("alice", "10.0.0.2") is None  # another pair is not delayed
    clock.now += 2
    assert lim.retry_after("alice", "10.0.0.1") is None
    lim.record_success("alice", "10.0.0.1")
    lim.record_failure("alice", "10.0.0.1")
    assert lim.retry_after("alice", "10.0.0.1") is None  # counting starts again


def test_strangers_are_refused_once_the_username_budget_is_spent_but_a_known_address_is_not(
    clock,
):
    lim = limiter(clock, per_user=3)
    lim.record_success("alice", "10.0.0.1")  # alice's own laptop
    for attacker in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        lim.record_failure("alice", attacker)
    assert lim.retry_after("alice", "192.0.2.9") == 300  # a new stranger waits for the window
    assert lim.retry_after("alice", None) == 300  # the broker path is a stranger too
    assert lim.retry_after("alice", "10.0.0.1") is None  # alice is not locked out


def test_an_address_spending_its_budget_on_unknown_names_keeps_its_known_users(clock):
    lim = limiter(clock, per_address=3)
    lim.record_success("bob", "10.0.0.1")  # bob logs in from the office
    for i in range(3):
        lim.record_failure(f"nobody{i}", "10.0.0.1")  # somebody in the office guesses names
    assert lim.retry_after("bob", "10.0.0.1") is None
    assert lim.retry_after("carol", "10.0.0.1") == 300  # a first login from there waits
    assert lim.retry_after("carol", "10.0.0.2") is None


def test_a_known_address_is_forgotten_after_its_time(clock):
    known = KnownAddresses(remember_seconds=100, clock=clock, per_user=2)
    known.add("alice", "a")
    assert ("alice", "a") in known
    assert ("alice", None) not in known
    clock.now += 100
    assert ("alice", "a") not in known
    known.add("alice", "b")
    known.add("alice", "c")
    known.add("alice", "d")  # only the two latest are kept
    assert ("alice", "b") not in known
    assert ("alice", "d") in known


def test_the_token_bucket_allows_its_burst_then_its_rate(clock):
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5
    assert bucket.take()
    assert not bucket.take()


def test_retry_after_is_a_whole_number_of_seconds_at_least_one(clock):
    lim = limiter(clock, per_user=1)
    lim.record_failure("alice", None)
    clock.now += 299.9
    assert lim.retry_after("alice", None) == 1
