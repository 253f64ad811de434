"""Failed-login throttling: delays that grow, budgets for strangers, never a lockout.

Three rules. The delays and budgets are in memory (a restart forgets them; several replicas
each keep their own); the known addresses are kept in the user store by the service, so a
restart does not turn an account's owner into a stranger:

- Per (username, address) pair, every failure past the first few doubles the wait before the
  next try from that pair (`PairThrottle`). A typo costs nothing; guessing slows to a crawl.
- An address that has logged in to an account before is *known* for that account
  (`KnownAddresses`). A known pair is held only by its own pair delay, so a stranger guessing
  alice's password, or flooding from alice's office, cannot keep alice out.
- Everybody else (a stranger pair) also answers to two sliding-window budgets: failures per
  username from anywhere, and failures per address over all names, existing or not. They stop
  password spraying across many names or from many addresses.

Broker logins (RabbitMQ's /broker/user) carry no client address (RabbitMQ 3.10 sends only
`username` and `password` there), so they are always strangers. `TokenBucket` bounds how many
broker password checks run per second in all, since no per-address rule can reach them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class SlidingWindow:
    """Timestamps of recent failures per key. Thread-safe."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None when it is not limited."""
        with self._lock:
            now = self._clock()
            stamps = self._live(key, now)
            if stamps is None or len(stamps) < self.limit:
                return None
            # Allowed again once all but limit-1 of the recorded failures have expired.
            unblocking = stamps[len(stamps) - self.limit]
            return max(unblocking + self.window - now, 0.001)

    def record(self, key: str) -> None:
        with self._lock:
            now = self._clock()
            stamps = self._live(key, now)
            if stamps is None:
                if len(self._failures) >= self._max_keys:
                    self._sweep(now)
                stamps = self._failures[key] = deque()
            stamps.append(now)
            while len(stamps) > self.limit:  # older ones no longer decide anything
                stamps.popleft()

    def __len__(self) -> int:
        return len(self._failures)

    def _live(self, key: str, now: float) -> deque[float] | None:
        stamps = self._failures.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return None
        return stamps

    def _sweep(self, now: float) -> None:
        for key in list(self._failures):
            self._live(key, now)
        # Still full (a flood of distinct keys): forget the oldest-inserted half.
        if len(self._failures) >= self._max_keys:
            for key in list(self._failures)[: len(self._failures) // 2]:
                del self._failures[key]


class PairThrottle:
    """Per key, a delay that doubles with each failure past `free_failures`. Thread-safe.

    A key is forgotten `forget_seconds` after its last failure, or at once on a success.
    """

    def __init__(
        self,
        free_failures: int,
        base_delay: float,
        max_delay: float,
        forget_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if free_failures < 0 or base_delay <= 0 or max_delay < base_delay:
            raise ValueError("free failures must be >= 0 and 0 < base delay <= max delay")
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_seconds = forget_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._state: dict[object, tuple[int, float]] = {}  # key -> (failures, last failure)
        self._lock = threading.Lock()

    def delay_after(self, failures: int) -> float:
        """The wait after `failures` failures: 0 up to the free ones, then base, 2 x base..."""
        if failures <= self.free_failures:
            return 0.0
        exponent = min(failures - self.free_failures - 1, 60)
        return float(min(self.base_delay * 2**exponent, self.max_delay))

    def retry_after(self, key: object) -> float | None:
        with self._lock:
            now = self._clock()
            state = self._live(key, now)
            if state is None:
                return None
            failures, last = state
            wait = last + self.delay_after(failures) - now
            return wait if wait > 0 else None

    def record(self, key: object) -> None:
        with self._lock:
            now = self._clock()
            state = self._live(key, now)
            if state is None and len(self._state) >= self._max_keys:
                self._sweep(now)
            failures = state[0] if state is not None else 0
            self._state[key] = (failures + 1, now)

    def clear(self, key: object) -> None:
        with self._lock:
            self._state.pop(key, None)

    def __len__(self) -> int:
        return len(self._state)

    def _live(self, key: object, now: float) -> tuple[int, float] | None:
        state = self._state.get(key)
        if state is not None and now - state[1] >= self.forget_seconds:
            del self._state[key]
            return None
        return state

    def _sweep(self, now: float) -> None:
        for key in list(self._state):
            self._live(key, now)
        if len(self._state) >= self._max_keys:  # a flood of distinct pairs: oldest half goes
            for key in list(self._state)[: len(self._state) // 2]:
                del self._state[key]


class KnownAddresses:
    """Addresses each account has logged in from, for `remember_seconds`. Thread-safe.

    Bounded: at most `per_user` addresses per account (the oldest goes) and `max_users`
    accounts (the least recently added half goes when full).
    """

    def __init__(
        self,
        remember_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        per_user: int = 16,
        max_users: int = 100_000,
    ) -> None:
        self.remember_seconds = remember_seconds
        self._clock = clock
        self._per_user = per_user
        self._max_users = max_users
        self._seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def add(self, username: str, address: str) -> None:
        with self._lock:
            addresses = self._seen.pop(username, None)
            if addresses is None:
                addresses = {}
                if len(self._seen) >= self._max_users:
                    for name in list(self._seen)[: len(self._seen) // 2]:
                        del self._seen[name]
            addresses.pop(address, None)
            addresses[address] = self._clock()
            while len(addresses) > self._per_user:
                del addresses[next(iter(addresses))]
            self._seen[username] = addresses

    def __contains__(self, pair: tuple[str, str | None]) -> bool:
        username, address = pair
        if address is None:
            return False
        with self._lock:
            seen_at = self._seen.get(username, {}).get(address)
            return seen_at is not None and self._clock() - seen_at < self.remember_seconds


class TokenBucket:
    """`rate` takes per second on average, up to `burst` at once. Thread-safe."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class AddressBook(Protocol):
    """Where the addresses each account logged in from are kept (memory, or the store)."""

    def add(self, username: str, address: str) -> None: ...

    def __contains__(self, pair: tuple[str, str | None]) -> bool: ...


class LoginLimiter:
    """The three rules of the module docstring, applied to one login attempt."""

    def __init__(
        self,
        pairs: PairThrottle,
        known: AddressBook,
        per_user: SlidingWindow,
        per_address: SlidingWindow,
    ) -> None:
        self.pairs = pairs
        self.known = known
        self.per_user = per_user
        self.per_address = per_address

    @classmethod
    def create(
        cls,
        per_user: int,
        per_address: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 600.0,
        known_seconds: float = 30 * 24 * 3600,
        known: AddressBook | None = None,
    ) -> LoginLimiter:
        """`known`: where known addresses are kept; by default in memory."""
        return cls(
            PairThrottle(
                free_failures, base_delay, max_delay, max(window_seconds, max_delay * 2), clock
            ),
            known if known is not None else KnownAddresses(known_seconds, clock),
            SlidingWindow(per_user, window_seconds, clock),
            SlidingWindow(per_address, window_seconds, clock),
        )

    def retry_after(self, username: str, address: str | None) -> int | None:
        """Whole seconds (at least 1) until a login may be tried, or None if it may now."""
        waits = [self.pairs.retry_after((username, address))]
        if (username, address) not in self.known:
            waits.append(self.per_user.retry_after(username))
            if address is not None:
                waits.append(self.per_address.retry_after(address))
        longest = max((w for w in waits if w is not None), default=None)
        return None if longest is None else max(1, math.ceil(longest))

    def record_failure(self, username: str, address: str | None) -> None:
        self.pairs.record((username, address))
        self.per_user.record(username)
        if address is not None:
            self.per_address.record(address)

    def record_success(self, username: str, address: str | None) -> None:
        self.pairs.clear((username, address))
        if address is not None:
            self.known.add(username, address)
