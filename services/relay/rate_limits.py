"""Per-sender and per-(sender, recipient) rate limits: token buckets, pure, no pika.

One flooding account must not slow delivery for everybody else, nor fill one victim's inbox
in seconds. The relay is where every message passes, so it keeps, per sender, a bucket of
`burst` tokens refilled at `rate` per second; each message a sender publishes takes one,
and a message that finds the bucket empty is answered `rejected: rate_limited` and acked
without any inbox publish. A second bucket per (sender, recipient) pair, smaller, keeps one
sender from filling one person's inbox (and their devices) even within the sender's overall
budget. Receipts have a bucket per sender of their own, larger: reading a backlog of
hundreds of messages sends hundreds of receipts at once, and that must not make the
reader's next message `rate_limited`.

The sender check needs only the broker-checked `user_id`, so it runs before the body is
parsed: the cost of a flood message is one dictionary look-up, one answer and one ack.

Buckets live in the relay's memory: each replica limits what it relays (a sender's
messages all go through one shard, so through one relay at a time), and a restarted relay
starts everybody with a full bucket. A bucket that has refilled is the same as none, so
idle ones are forgotten (`sweep`), which bounds memory by the senders active in the last
`burst / rate` seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Check for idle buckets at most this often (seconds of the limiter's clock).
SWEEP_INTERVAL_SECONDS = 30.0


@dataclass(frozen=True)
class Rate:
    """`per_second` tokens a second, at most `burst` saved up; per_second <= 0: no limit."""

    per_second: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.per_second <= 0

    @property
    def refill_seconds(self) -> float:
        """From empty to full."""
        return self.burst / self.per_second if not self.unlimited else 0.0


# `rate_limited` answers per sender: a client slightly over its limit hears about every
# message it sent (the library waits for each answer), a flood at thousands a second hears
# about these many and the rest is acked unanswered: an answer is most of what a refused
# message costs the relay.
REFUSAL_ANSWERS = Rate(100.0, 1000)


class Limit(enum.Enum):
    SENDER = "sender"
    RECIPIENT = "recipient"
    RECEIPTS = "receipts"


class Buckets:
    """Token buckets of one rate, by key."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._tokens: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, as of when)

    def __len__(self) -> int:
        return len(self._tokens)

    def take(self, key: Hashable, now: float) -> bool:
        """Take a token for `key`; False (nothing taken) if its bucket is empty."""
        rate = self.rate
        if rate.unlimited:
            return True
        tokens, since = self._tokens.get(key, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - since) * rate.per_second)
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            return False
        self._tokens[key] = (tokens - 1.0, now)
        return True

    def sweep(self, now: float) -> None:
        """Forget buckets that are full again by `now`."""
        full_after = self.rate.refill_seconds
        self._tokens = {k: v for k, v in self._tokens.items() if now - v[1] < full_after}


class RateLimits:
    """The relay's three kinds of bucket; `now` is a monotonic clock in seconds."""

    def __init__(
        self, *, sender: Rate, recipient: Rate, receipts: Rate, clock: Callable[[], float]
    ) -> None:
        self._clock = clock
        self._senders = Buckets(sender)
        self._pairs = Buckets(recipient)
        self._receipts = Buckets(receipts)
        self._refusal_answers = Buckets(REFUSAL_ANSWERS)
        self._next_sweep = clock() + SWEEP_INTERVAL_SECONDS
        self._sender_detail = (
            f"more than {sender.per_second:g} messages a second (after a burst of {sender.burst})"
        )

    def allow_sender(self, sender: str, *, receipt: bool) -> bool:
        """Before parsing: may `sender` have one more message (or receipt) relayed now?"""
        now = self._tick()
        if receipt:
            return self._receipts.take(sender, now)
        return self._senders.take(sender, now)

    def allow_pair(self, sender: str, recipient: str) -> bool:
        """After parsing a message: may `sender` write to `recipient` once more now?"""
        return self._pairs.take((sender, recipient), self._tick())

    def answer_refusal(self, sender: str) -> bool:
        """May the relay answer one more of `sender`'s rate-limited messages now?"""
        return self._refusal_answers.take(sender, self._tick())

    def describe(self, limit: Limit, recipient: str = "") -> str:
        """The `detail` of a rate_limited answer (the client shows "slow down: <detail>")."""
        if limit is Limit.RECIPIENT:
            rate = self._pairs.rate
            return (
                f"more than {rate.per_second:g} messages a second to {recipient or 'one person'}"
                f" (after a burst of {rate.burst})"
            )
        return self._sender_detail

    def _tick(self) -> float:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_SECONDS
            for buckets in (self._senders, self._pairs, self._receipts, self._refusal_answers):
                buckets.sweep(now)
        return now
