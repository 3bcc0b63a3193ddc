"""One rate limit for a whole fleet: GCRA in a Lua script, on Redis' own clock.

Every process that sends to one (workspace, region) — ``ciotrack worker`` replicas, or embedded
trackers given ``rate_limit_redis_url`` — takes its slots from the same two keys::

    ciotrack:{<ws>:<region>}:gcra          the theoretical arrival time (TAT), µs on Redis' clock
    ciotrack:{<ws>:<region>}:paused_until  µs; set by a 429, honoured by every caller

GCRA with emission interval ``T = 1/rate`` and tolerance ``tau = (burst - 1) * T``: a request may go
at ``max(now, TAT - tau, paused_until)``; taking that slot moves ``TAT`` to ``max(TAT, slot) + T``.
The script *reserves*: it returns the wait before the caller's own slot and every waiter gets a
distinct slot ``T`` apart, so there is no herd when a slot frees up and no polling. A caller that will
not wait that long (``acquire(timeout)`` with a smaller timeout) reserves nothing: the script only
advances TAT when ``wait <= max_wait``. ``TIME`` (µs) is Redis' clock, so hosts' clock skew does not
matter; Redis ≥ 5 replicates script effects, so reading ``TIME`` before a write is allowed.

Both keys share one hash tag (one Cluster slot) and expire once idle. When Redis cannot be reached the
limiter falls back to a local bucket at the same rate (logged, throttled): the fleet may then exceed
the workspace limit and see 429s, which pause it, rather than stop sending altogether.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ciotrack.fleet.streams import workspace_tag
from ciotrack.ratelimit import local_limiter

if TYPE_CHECKING:
    import redis

__all__ = ["RedisLimiter", "RedisLimiters"]

log = logging.getLogger("ciotrack.fleet")

# KEYS: tat, paused_until. ARGV: interval µs, tolerance µs, max wait µs (-1 = peek, reserve nothing).
# Returns {reserved 0|1, wait µs, tokens*1000 available now}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
local slot = tat - tolerance
if slot < paused then slot = paused end
if slot < now then slot = now end
local wait = slot - now
local tokens = math.floor(((now - (tat - tolerance - interval)) / interval) * 1000)
if paused > now then tokens = 0 end
if max_wait < 0 or wait > max_wait then
  return {0, wait, tokens}
end
local new_tat = tat
if slot > new_tat then new_tat = slot end
new_tat = new_tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, wait, tokens}
"""

# KEYS: paused_until. ARGV: pause µs. Keeps the later of the stored and the new end.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= until_us then return 0 end
redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
return 1
"""


class RedisLimiter:
    """A :class:`ciotrack.ratelimit.Limiter` shared through Redis (see the module docstring).

    ``rate`` requests/s with bursts of ``burst``; ``client`` is a ``redis.Redis`` (its socket timeout
    bounds each call). ``close()`` wakes every waiter with False.
    """

    def __init__(self, client: redis.Redis, site_id: str, region: str, rate: float, burst: float = 1.0,
                 prefix: str = "ciotrack") -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        tag = f"{prefix}:{{{workspace_tag(site_id)}:{region}}}"
        self.keys = (f"{tag}:gcra", f"{tag}:paused_until")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._interval_us = max(1, round(1_000_000 / self.rate))
        self._tolerance_us = round((self.burst - 1.0) * self._interval_us)
        self._client = client
        self._acquire_script = client.register_script(_ACQUIRE)
        self._pause_script = client.register_script(_PAUSE)
        self._closed = threading.Event()
        self._fallback = local_limiter(self.rate, self.burst)
        self._last_warning = 0.0

    def __repr__(self) -> str:
        return f"RedisLimiter(key={self.keys[0]!r}, rate={self.rate}, burst={self.burst})"

    def _call(self, max_wait_us: int) -> tuple[int, float, float] | None:
        import redis as redis_module

        try:
            reply: Any = self._acquire_script(keys=list(self.keys),
                                              args=[self._interval_us, self._tolerance_us, max_wait_us])
        except (redis_module.RedisError, OSError) as exc:
            self._warn(exc)
            return None
        return int(reply[0]), int(reply[1]) / 1e6, int(reply[2]) / 1000.0

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("ciotrack fleet: shared rate limiter unreachable (%s); using a local limit of %g/s",
                        type(exc).__name__, self.rate)

    def acquire(self, timeout: float) -> bool:
        """Reserve the next slot if it comes within ``timeout`` s and sleep until it; else wait
        ``timeout`` and return False without having reserved anything."""
        if self._closed.is_set():
            return False
        timeout = max(0.0, timeout)
        reply = self._call(int(timeout * 1e6))
        if reply is None:
            return self._fallback.acquire(timeout) and not self._closed.is_set()
        reserved, wait, _ = reply
        if not reserved:
            # Nothing reserved: sleep out the caller's timeout (capped by the known wait) so a
            # caller asking again in a loop does not spin on Redis.
            self._closed.wait(min(timeout, wait))
            return False
        if wait > 0 and self._closed.wait(wait):
            return False
        return not self._closed.is_set()

    def pause(self, seconds: float) -> None:
        """No slot for anyone for ``seconds`` (a 429); extends a shared pause, never shortens it."""
        if seconds <= 0:
            return
        import redis as redis_module

        try:
            self._pause_script(keys=[self.keys[1]], args=[int(seconds * 1e6)])
        except (redis_module.RedisError, OSError) as exc:
            self._warn(exc)
        self._fallback.pause(seconds)

    def tokens(self) -> float:
        """Slots available now (a gauge; 0 while paused)."""
        reply = self._call(-1)
        if reply is None:
            return self._fallback.tokens()
        return max(0.0, min(self.burst, reply[2]))

    def close(self) -> None:
        self._closed.set()
        self._fallback.close()


class RedisLimiters:
    """``Tracker(rate_limit_redis_url=...)``'s limiter factory: ``region -> RedisLimiter``."""

    def __init__(self, url: str, site_id: str, rate: float, burst: float) -> None:
        self._url = url
        self._site_id = site_id
        self._rate = rate
        self._burst = burst

    def __repr__(self) -> str:  # the URL may carry a password
        return f"RedisLimiters(site_id={self._site_id!r}, rate={self._rate}, burst={self._burst})"

    def __call__(self, region: str) -> RedisLimiter:
        from ciotrack.fleet.producer import connect

        return RedisLimiter(connect(self._url, socket_timeout=2.0), self._site_id, region, self._rate, self._burst)
