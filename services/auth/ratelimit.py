"""Failed-login limits: a sliding window per username and per client address, in memory.

Only failures are counted. Once a key has `limit` failures inside the window, every login
for it is refused (even with the right password) until the oldest of them leaves the window.
State is per process: a restart forgets it, and several replicas each keep their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


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


class LoginLimiter:
    """Both limits of a login: per username, and per client address when there is one.

    Broker logins (through /broker/user) have no client address: RabbitMQ does not send it,
    so they count per username only.
    """

    def __init__(self, per_user: SlidingWindow, per_address: SlidingWindow) -> None:
        self.per_user = per_user
        self.per_address = per_address

    @classmethod
    def create(
        cls,
        per_user: int,
        per_address: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> LoginLimiter:
        return cls(
            SlidingWindow(per_user, window_seconds, clock),
            SlidingWindow(per_address, window_seconds, clock),
        )

    def retry_after(self, username: str, address: str | None) -> int | None:
        """Whole seconds (at least 1) until a login may be tried, or None if it may now."""
        waits = [self.per_user.retry_after(username)]
        if address is not None:
            waits.append(self.per_address.retry_after(address))
        longest = max((w for w in waits if w is not None), default=None)
        return None if longest is None else max(1, math.ceil(longest))

    def record_failure(self, username: str, address: str | None) -> None:
        self.per_user.record(username)
        if address is not None:
            self.per_address.record(address)
