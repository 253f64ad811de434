"""The one backoff: capped doubling delays, used for every retry the code waits on.

Reconnecting (relay, client, across nodes), publishing a held message again (relay) and
publishing a nacked message again (client) all wait 0.5, 1, 2, 4 ... seconds up to a cap.
A retry here always runs inside an I/O loop or a loop that must stay interruptible, so the
delay is computed here and the waiting stays with the caller (tenacity's decorators would
own the loop instead).
"""

from __future__ import annotations

FIRST_DELAY_SECONDS = 0.5


def backoff_delay(attempt: int, maximum: float, first: float = FIRST_DELAY_SECONDS) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): first, 2 x first ... maximum."""
    return float(min(maximum, first * 2.0 ** max(0, attempt - 1)))


class Backoff:
    """`backoff_delay` with its own count: `next_delay()` per failure, `reset()` once healthy."""

    def __init__(self, maximum: float, first: float = FIRST_DELAY_SECONDS) -> None:
        self.maximum = maximum
        self.first = first
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, self.maximum, self.first)

    def reset(self) -> None:
        self.attempt = 0
