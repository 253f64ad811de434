"""Time-ordered server message ids (RFC 9562 UUIDv7/v8), hand-rolled because they are small.

48 bits of Unix milliseconds, then 74 bits that start random each millisecond and count up
within it, so ids from one relay sort in the order it stamped them, and ids from several
replicas sort by time (to the millisecond) and never collide in practice.
"""

import secrets
import time
import uuid
from collections.abc import Callable

from protocol.ids import RANDOM_BITS

# Start each millisecond in the lower half, leaving room to count up without overflowing.
_START_BITS = RANDOM_BITS - 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class IdGenerator:
    """`next_id()` returns the canonical string of a new, strictly increasing UUIDv7."""

    def __init__(self, clock_ms: Callable[[], int] = _now_ms) -> None:
        self._clock_ms = clock_ms
        self._last_ms = -1
        self._last_random = 0

    def next_id(self) -> str:
        ms = self._clock_ms()
        if ms <= self._last_ms:  # same millisecond, or the clock stepped back: keep counting
            ms = self._last_ms
            random = self._last_random + 1
            if random >> RANDOM_BITS:  # 2**73 ids in one millisecond: move to the next
                ms, random = ms + 1, secrets.randbits(_START_BITS)
        else:
            random = secrets.randbits(_START_BITS)
        self._last_ms, self._last_random = ms, random
        rand_a = random >> 62  # 12 bits
        rand_b = random & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
        return str(uuid.UUID(int=value))
