"""The failed-login limiter: a sliding window per username and per client address."""

import pytest

from services.auth.ratelimit import LoginLimiter, SlidingWindow


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


def test_login_limiter_refuses_when_either_the_user_or_the_address_is_limited(clock):
    limiter = LoginLimiter.create(per_user=2, per_address=3, window_seconds=60, clock=clock)
    limiter.record_failure("alice", "10.0.0.1")
    limiter.record_failure("alice", "10.0.0.2")
    # alice is limited from any address
    assert limiter.retry_after("alice", "10.0.0.9") == 60
    # 10.0.0.1 is not limited yet for somebody else
    assert limiter.retry_after("bob", "10.0.0.1") is None
    limiter.record_failure("carol", "10.0.0.1")
    limiter.record_failure("dave", "10.0.0.1")
    assert limiter.retry_after("bob", "10.0.0.1") == 60


def test_login_limiter_counts_broker_logins_per_username_only(clock):
    limiter = LoginLimiter.create(per_user=2, per_address=1, window_seconds=60, clock=clock)
    limiter.record_failure("alice", None)
    assert limiter.retry_after("alice", None) is None
    assert limiter.retry_after("bob", "10.0.0.1") is None
    limiter.record_failure("alice", None)
    assert limiter.retry_after("alice", None) == 60


def test_retry_after_is_a_whole_number_of_seconds_at_least_one(clock):
    limiter = LoginLimiter.create(per_user=1, per_address=10, window_seconds=60, clock=clock)
    limiter.record_failure("alice", None)
    clock.now += 59.9
    assert limiter.retry_after("alice", None) == 1
