"""When to send a failed batch again: jittered exponential backoff with ``Retry-After`` as a floor.

The policy is pure arithmetic (no sleeping, no I/O) so the sender, the sync path and the tests share it.
A batch is retried with the SAME bytes, so Customer.io's event-id dedup keeps retries idempotent.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for one batch.

    ``delay(attempt)`` for ``attempt`` = 1, 2, ... is ``backoff_base * 2**(attempt-1)`` capped at
    ``backoff_cap``, with "equal jitter" (uniformly in ``[d/2, d]``) so that many senders (or many
    processes) failing together do not come back in lock step, yet never retry sooner than half the
    nominal delay. A server's ``Retry-After`` is a floor (it knows better than our guess), capped by
    ``retry_after_cap`` so a hostile or buggy header cannot park the sender for hours.
    """

    max_retries: int = 8
    retry_budget: float = 120.0
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    retry_after_cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        nominal = min(self.backoff_cap, self.backoff_base * (2.0 ** max(0, attempt - 1)))
        uniform = (rng or _RNG).random()
        delay = nominal * (0.5 + 0.5 * uniform)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.retry_after_cap))
        return delay

    def gives_up(self, attempt: int, elapsed: float, next_delay: float) -> bool:
        """True when retry number ``attempt`` (1-based) should not happen.

        Both bounds hold: at most ``max_retries`` retries, and no retry that would start after
        ``retry_budget`` seconds since the first attempt.
        """
        return attempt > self.max_retries or elapsed + next_delay > self.retry_budget


# The module RNG is only used for jitter; seeding it is unnecessary and a shared instance avoids an
# allocation per retry.
_RNG = random.Random()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            return None  # a date Python cannot represent (year 10000) is as good as none
    if seconds != seconds or seconds < 0:  # NaN or in the past: "retry now"
        return 0.0
    return seconds
