"""Adaptive send concurrency: enough requests in flight to fill the workspace limit, and no more.

Customer.io is 50-300 ms away and allows about 100 requests/s per workspace, so by Little's law a
sender needs ``rate x latency`` requests in flight (10 at 100 ms, 30 at 300 ms) to use the limit; one
request at a time reaches a tenth of it. The right level moves with the latency and is unknown up
front, so :class:`AdaptiveConcurrency` finds it the way TCP finds a congestion window, after
Netflix's ``Gradient2Limit`` and Envoy's adaptive concurrency filter:

* **start** like TCP's slow start when there is a rate limit: until the first answer tells the
  latency, every request actually sent (it got a rate-limit token) while full batches wait and every
  slot is taken opens one more slot, so the first round trip is filled at the rate limit's pace
  rather than by one request (at 300 ms that round trip alone is 30 requests);
* **grow** by one slot per completed request (additive), or at once to ``rate x latency`` (Little's
  law, from the first answer on) when that is more, while there is *demand* (full batches wait), the
  sender is not *app-limited* (at least half the slots are busy) and the rate limiter still has
  tokens, i.e. concurrency, not the rate limit, is what holds throughput back;
* **hold** once the limiter is the bottleneck (no tokens left): more slots would only wait for tokens
  and open sockets;
* with **no rate limit** (``rate_limit=0``) there is no throughput to reach, and on a near receiver
  the latency barely moves while more threads only add GIL hand-overs; so growth is a probe: one
  slot more for a window of responses, kept only when it raised the responses per second (by at
  least a share of what one more slot could add), else undone and not tried again for
  :data:`PROBE_HOLD` seconds;
* **shrink** with the latency gradient ``long_rtt / short_rtt`` (clamped to [0.5, 1], with a
  tolerance so network jitter does not count) when requests get slower than their baseline, a sign
  that we are queueing at the receiver; and **halve** on a 429 (at most once per round trip, so one
  burst of 429s is one decrease).

The controller is pure arithmetic plus a lock: it neither sleeps nor sends, and it takes the time
from an injectable clock, so its decisions are unit-tested with a fake clock. The pipeline asks
:meth:`try_acquire` before it takes a batch and :meth:`release` when the batch is finished; the
delivery loop reports every response to :meth:`observe`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "MAX_IN_FLIGHT_BOUND", "PROBE_HOLD", "UNLIMITED_MAX_IN_FLIGHT",
           "AdaptiveConcurrency", "Concurrency", "ConcurrencyState", "FixedConcurrency"]

DEFAULT_MAX_IN_FLIGHT = 64
"""100 requests/s at 300 ms need 30 in flight, ~33 at the measured round trip of a 500 KB batch, and
more while the controller ramps up from cold; 32 bound there (85 % of the limit). 64 leaves room for a
farther workspace, and costs a fast one nothing: the Little's-law cap (1.5 x rate x latency + 1)
keeps its limit, threads and sockets low."""
PROBE_HOLD = 5.0
"""With no rate limit: seconds before a slot that bought no throughput is tried again."""
MAX_IN_FLIGHT_BOUND = 128
"""The largest ``max_in_flight`` a Config accepts: threads and sockets per region stay bounded."""
UNLIMITED_MAX_IN_FLIGHT = 8
"""The cap with no rate limit (``rate_limit=0``): there is no throughput to reach, only the latency
gradient to stop growth, and every extra sender thread costs the application some GIL time."""


@dataclass(frozen=True, slots=True)
class ConcurrencyState:
    """A snapshot for stats and metrics."""

    limit: int
    in_flight: int
    short_rtt: float
    long_rtt: float
    adaptive: bool


class AdaptiveConcurrency:
    """Concurrency limit of one destination (one region's Track API, or one worker's deliveries).

    ``initial`` slots at start (at least ``min_limit``), never more than ``max_limit``. ``tolerance``:
    how much slower than the long-term baseline the recent latency may be before the limit shrinks
    (2.0: twice as slow). ``long_window``: samples in the baseline's exponential average.
    """

    def __init__(
        self,
        *,
        max_limit: int = DEFAULT_MAX_IN_FLIGHT,
        min_limit: int = 1,
        initial: int = 2,
        slow_start: bool = False,
        tolerance: float = 2.0,
        long_window: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        self.max_limit = max_limit
        self.min_limit = min_limit
        self._limit = float(max(min_limit, min(max_limit, initial)))
        self._slow_start = slow_start and min_limit < max_limit
        self._tolerance = tolerance
        self._long_alpha = 2.0 / (long_window + 1)
        self._short_alpha = 0.5  # the last couple of samples: what latency is like right now
        self._clock = clock
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._waiting = 0  # threads in wait_for_slot: only then is a growing limit worth a notify
        self._closed = False
        self._in_flight = 0
        self._short_rtt = 0.0
        self._long_rtt = 0.0
        self._no_decrease_before = float("-inf")
        # Throughput probing (no rate limit): the current window, and the throughput one slot lower.
        self._window_start: float | None = None
        self._window_responses = 0
        self._probe_base: float | None = None
        self._no_probe_before = float("-inf")

    # -- the pipeline's side --------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a slot for one request; False when ``limit`` requests are already in flight."""
        with self._lock:
            if self._in_flight >= int(self._limit):
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        """A slot's batch is finished (delivered, failed, spooled or parked)."""
        # No notify: the releasing sender goes straight back for its next batch and takes the slot
        # again itself; waking a waiter here would only make it take the GIL to find no slot.
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def wait_for_slot(self, timeout: float) -> bool:
        """Block until fewer than ``limit`` requests are in flight, at most ``timeout`` seconds; True
        when a slot is free (not taken: :meth:`try_acquire` still decides). A sender thread with no
        slot waits here: retrying at once would spin, and every spin is a GIL hand-over the
        application pays for (measured: 512 GIL acquisitions per request with one thread over the
        limit, against 14 without). A growing limit wakes it; a release does not (see :meth:`release`)."""
        with self._lock:
            if self._closed or self._in_flight < int(self._limit):
                return True
            self._waiting += 1
            try:
                return self._slot_freed.wait_for(lambda: self._closed or self._in_flight < int(self._limit), timeout)
            finally:
                self._waiting -= 1

    def close(self) -> None:
        """The pipeline is stopping: every :meth:`wait_for_slot` returns now, and later ones at once."""
        with self._lock:
            self._closed = True
            self._slot_freed.notify_all()

    def sending(self, *, demand: bool) -> bool:
        """A request is about to go out (it has its rate-limit token). Before the first answer, with
        ``slow_start``: one slot more when ``demand`` (a full batch waits) and every slot is taken;
        True when the limit grew (the caller may add a sender thread to use it)."""
        if not self._slow_start or self._long_rtt != 0.0 or not demand:
            return False  # the common case, without the lock: a latency is known, or nothing waits
        with self._lock:
            limit = int(self._limit)
            if self._long_rtt != 0.0 or self._in_flight < limit or limit >= self.max_limit:
                return False
            self._limit = float(limit + 1)
            if self._waiting:
                self._slot_freed.notify()
            return True

    def observe(self, rtt: float | None, *, throttled: bool = False, demand: bool = False,
                rate_bound: bool = False, rate: float | None = None) -> None:
        """One response. ``rtt``: the request's duration (None when no answer came: no latency sample).
        ``throttled``: it was a 429. ``demand``: a full batch is waiting. ``rate_bound``: the rate
        limiter had no token to spare (the rate limit, not concurrency, binds). ``rate``: the rate
        limit in requests/s, when there is one: by Little's law ``rate x latency`` requests in flight
        fill it, so the limit never grows past 1.5 times that (plus one): no idle sockets or threads."""
        with self._lock:
            in_flight = self._in_flight
            now = self._clock()
            if throttled:
                if now >= self._no_decrease_before:
                    self._limit = max(float(self.min_limit), self._limit / 2)
                    self._no_decrease_before = now + max(self._short_rtt, 0.05)
                return
            if rtt is None or rtt < 0:
                return
            self._sample(rtt)
            limit = self._limit
            # The gradient: 1 while recent requests are as fast as the baseline (within tolerance),
            # down to 0.5 when they are much slower (queueing at the receiver).
            gradient = 1.0
            if self._short_rtt > 0:
                gradient = max(0.5, min(1.0, self._tolerance * self._long_rtt / self._short_rtt))
            grow = demand and not rate_bound and in_flight >= limit / 2 and gradient >= 1.0
            new = limit * gradient
            if new < limit:
                new = limit - 0.2 * (limit - new)  # shrink smoothly: one slow outlier is not a trend
            if rate is not None and rate > 0:
                if grow:
                    # One more slot, or straight to what Little's law says the rate needs at this
                    # latency: from a cold start at 300 ms, doubling per round trip would take five
                    # round trips (1.5 s) to reach the 30 in flight that 100 requests/s need.
                    new = max(new + 1.0, float(math.ceil(rate * self._long_rtt)))
                new = min(new, math.ceil(rate * self._long_rtt * 1.5) + 1.0)
            else:
                new += self._probe(now, limit, grow)
            self._limit = max(float(self.min_limit), min(float(self.max_limit), new))
            if self._waiting and int(self._limit) > int(limit):
                self._slot_freed.notify(int(self._limit) - int(limit))

    def _probe(self, now: float, limit: float, want_more: bool) -> float:
        """With no rate limit: the step to take at the end of a window of responses (+1: probe one
        slot more; -1: the last probe bought no throughput, undo it; 0). Called under the lock."""
        self._window_responses += 1
        start = self._window_start
        if start is None:
            self._window_start, self._window_responses = now, 0
            return 0.0
        elapsed = now - start
        if self._window_responses < max(8, 2 * int(limit)) or elapsed <= 0 or elapsed < 3 * self._long_rtt:
            return 0.0
        throughput = self._window_responses / elapsed
        self._window_start, self._window_responses = now, 0
        base, self._probe_base = self._probe_base, None
        # Going from n-1 to n slots can add at most 1/(n-1) of the throughput; keep the slot only if
        # it added a fair share of that (at least 5 %), else it only added threads and GIL hand-overs.
        if base is not None and throughput < base * (1.0 + max(0.05, 0.3 / max(1.0, limit - 1.0))):
            self._no_probe_before = now + PROBE_HOLD
            return -1.0
        if want_more and now >= self._no_probe_before and limit + 1.0 <= self.max_limit:
            self._probe_base = throughput
            return 1.0
        return 0.0

    def _sample(self, rtt: float) -> None:
        if self._long_rtt == 0.0:
            self._long_rtt = self._short_rtt = rtt
            return
        self._short_rtt += self._short_alpha * (rtt - self._short_rtt)
        self._long_rtt += self._long_alpha * (rtt - self._long_rtt)
        # After a long slow period the baseline lags far above the recent latency: pull it down
        # faster than the average would, so the next slowdown is measured against today's latency.
        if self._long_rtt > 2 * self._short_rtt:
            self._long_rtt *= 0.9
        # A latency that stays high becomes the new baseline (a farther receiver, not queueing):
        # the average moves towards it, the gradient returns to 1 and growth resumes.

    # -- gauges ---------------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def state(self) -> ConcurrencyState:
        return ConcurrencyState(int(self._limit), self._in_flight, self._short_rtt, self._long_rtt,
                                self.min_limit != self.max_limit)


def FixedConcurrency(limit: int) -> AdaptiveConcurrency:  # noqa: N802 - reads as the type it stands for
    """``senders=N``: exactly N requests in flight at most, whatever happens (a pinned controller:
    its minimum and maximum are both N, so nothing it observes moves the limit)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return AdaptiveConcurrency(max_limit=limit, min_limit=limit, initial=limit)


Concurrency = AdaptiveConcurrency
