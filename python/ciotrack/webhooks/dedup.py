"""Dedup by ``event_id``: Customer.io retries a webhook until it gets a 2xx, so the same event can
arrive more than once (and a replayed request carries a valid signature too).

``claim(event_id)`` is atomic and says what the id is: new (now claimed), a duplicate of an event
already accepted, or in progress (another request holds a lease on it). A claim with no ``lease`` marks
the event accepted at once (the thread pool takes it in the same breath); a claim with a ``lease``
holds it only for that many seconds, while work that can fail runs (``inline=True``, ``dispatch=``),
and ``confirm(event_id)`` makes it for good, or ``release(event_id)`` gives it back.

Why two steps: a retry that arrives while the first attempt still runs must not be answered 200 as a
duplicate (if that attempt then fails, nothing ever retries the event), and a give-back that fails (Redis
gone in between) must not keep the id for 8 days. A lease ends by itself, so neither can lose an event.
``MemoryDedup`` serves one process; ``RedisDedup`` (``SET NX EX``) a fleet sharing the feed.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from typing import Any, Final, Protocol, runtime_checkable

logger = logging.getLogger("ciotrack.webhooks")

# Customer.io retries for up to 7 days: an id must be remembered at least that long to catch them all.
DEFAULT_TTL: Final = 8 * 24 * 3600
# How long a claim made before work that can fail (inline handling, a hand-off) is held unless confirmed:
# well past Customer.io's 4 s answer deadline plus the handler's retries, and short enough that a lease
# left behind (a process killed mid-request, a give-back that failed) lets the next retry through.
DEFAULT_LEASE: Final = 60.0


class Claim(enum.Enum):
    """What ``Dedup.claim`` found. Truthy only for ``FIRST``."""

    FIRST = "first"
    """Not seen before: claimed now (for good, or for the lease)."""
    DUPLICATE = "duplicate"
    """Accepted before: answer 200 and do nothing."""
    IN_PROGRESS = "in_progress"
    """Another request holds a lease on it: answer 503, so Customer.io retries once that one is done."""

    def __bool__(self) -> bool:
        return self is Claim.FIRST


# The members as plain names: an Enum member read from its class goes through the metaclass (~10x slower
# than a global), and these are read on every webhook.
FIRST: Final = Claim.FIRST
DUPLICATE: Final = Claim.DUPLICATE
IN_PROGRESS: Final = Claim.IN_PROGRESS


@runtime_checkable
class Dedup(Protocol):
    def claim(self, event_id: str, lease: float | None = None) -> Claim:
        """``Claim.FIRST`` if ``event_id`` was not seen (it is now: for good with ``lease=None``, else
        for ``lease`` seconds unless confirmed), ``DUPLICATE`` or ``IN_PROGRESS`` otherwise."""
        ...

    def confirm(self, event_id: str) -> None:
        """Make a leased claim for good (the event was accepted)."""
        ...

    def release(self, event_id: str) -> None:
        """Forget ``event_id`` (it was claimed but not accepted)."""
        ...


class MemoryDedup:
    """The last ``max_size`` event ids (and none older than ``ttl`` seconds, if given), in memory.

    Bounded so a long-running process cannot grow without limit; an id evicted by size can be
    processed again, so size it above (webhooks per second x the retry horizon you care about)."""

    def __init__(self, max_size: int = 100_000, ttl: float | None = None) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.ttl = ttl
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        # Leased claims: event id -> when the lease ends. As many as requests in progress: each ends in
        # confirm() or release(), and one left behind is dropped at its id's next claim.
        self._leases: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, event_id: str, lease: float | None = None) -> Claim:
        now = time.monotonic()
        with self._lock:
            if self._leases:
                ends = self._leases.get(event_id)
                if ends is not None:
                    if now < ends:
                        return IN_PROGRESS
                    del self._leases[event_id]
            seen_at = self._seen.get(event_id)
            if seen_at is not None and (self.ttl is None or now - seen_at < self.ttl):
                return DUPLICATE
            if lease is None:  # (the common case, written out: no method call)
                seen = self._seen
                seen[event_id] = now
                seen.move_to_end(event_id)
                if len(seen) > self.max_size:
                    seen.popitem(last=False)
            else:
                self._leases[event_id] = now + lease
            return FIRST

    def _remember(self, event_id: str, now: float) -> None:
        self._seen[event_id] = now
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)

    def confirm(self, event_id: str) -> None:
        with self._lock:
            self._leases.pop(event_id, None)
            self._remember(event_id, time.monotonic())

    def release(self, event_id: str) -> None:
        with self._lock:
            self._leases.pop(event_id, None)
            self._seen.pop(event_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def __repr__(self) -> str:
        return f"MemoryDedup(max_size={self.max_size}, ttl={self.ttl}, size={len(self)})"


# The values of RedisDedup's keys. An accepted event's is "1", as before leases existed, so ids
# remembered by an earlier version still count as accepted.
_DONE: Final = b"1"
_LEASED: Final = b"leased"
# A client RedisDedup builds from a url answers within this (s) or fails: a webhook must be answered
# within Customer.io's 4 s, and redis-py waits forever by default.
REDIS_TIMEOUT: Final = 1.0


class RedisDedup:
    """``SET <prefix><event_id> 1 NX EX <ttl>`` in Redis, shared by every process of a fleet (a leased
    claim is ``SET ... leased NX EX <lease>``, confirmed by ``SET ... 1 EX <ttl>``).

    ``client`` is a ``redis.Redis`` (or pass ``url``, and the client gets ``REDIS_TIMEOUT`` socket
    timeouts; needs ``pip install 'ciotrack[fleet]'``). When Redis fails, ``fail_open=True`` (the
    default) processes the event anyway, since a duplicate is better than a lost event; False raises,
    and the handler answers 503."""

    def __init__(self, client: Any = None, *, url: str | None = None, prefix: str = "ciotrack:webhook:seen:",
                 ttl: int = DEFAULT_TTL, fail_open: bool = True) -> None:
        if client is None:
            if url is None:
                raise ValueError("RedisDedup needs a redis client or a url")
            import redis

            client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
        self.client = client
        self.prefix = prefix
        self.ttl = int(ttl)
        self.fail_open = fail_open
        self._last_warning = 0.0
        self.errors = 0

    def _failed(self, exc: Exception, doing: str) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning > 10.0:  # throttled: a Redis outage would log every webhook
            self._last_warning = now
            logger.warning("webhook dedup: Redis failed to %s (%s: %s); %s", doing, type(exc).__name__, exc,
                           "processing without dedup" if self.fail_open else "refusing webhooks")

    def claim(self, event_id: str, lease: float | None = None) -> Claim:
        key = self.prefix + event_id
        try:
            if lease is None:
                taken = self.client.set(key, _DONE, nx=True, ex=self.ttl)
            else:
                taken = self.client.set(key, _LEASED, nx=True, px=max(1, int(lease * 1000)))
            if taken:
                return FIRST
            # Someone has it: accepted, or leased. A key that expired in between is taken for a lease:
            # 503, and the retry finds it free.
            return DUPLICATE if self.client.get(key) == _DONE else IN_PROGRESS
        except Exception as exc:  # redis.RedisError, OSError: the module is optional, catch broadly
            self._failed(exc, "claim")
            if self.fail_open:
                return FIRST
            raise

    def confirm(self, event_id: str) -> None:
        try:
            self.client.set(self.prefix + event_id, _DONE, ex=self.ttl)
        except Exception as exc:  # the lease ends by itself; a later retry would be processed again
            self._failed(exc, "confirm")

    def release(self, event_id: str) -> None:
        try:
            self.client.delete(self.prefix + event_id)
        except Exception as exc:  # the lease ends by itself, and the retry after it is taken
            self._failed(exc, "release")

    def __repr__(self) -> str:
        return f"RedisDedup(prefix={self.prefix!r}, ttl={self.ttl}, fail_open={self.fail_open})"


__all__ = ["DEFAULT_LEASE", "DEFAULT_TTL", "DUPLICATE", "FIRST", "IN_PROGRESS", "Claim", "Dedup", "MemoryDedup",
           "RedisDedup"]
