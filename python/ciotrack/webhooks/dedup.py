"""Dedup by ``event_id``: Customer.io retries a webhook until it gets a 2xx, so the same event can
arrive more than once (and a replayed request carries a valid signature too).

``claim(event_id)`` is atomic: True for the first caller only. ``release(event_id)`` gives a claim
back when the event could not be accepted after all (so Customer.io's retry is processed).
``MemoryDedup`` serves one process; ``RedisDedup`` (``SET NX EX``) a fleet sharing the feed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Final, Protocol, runtime_checkable

logger = logging.getLogger("ciotrack.webhooks")

# Customer.io retries for up to 7 days: an id must be remembered at least that long to catch them all.
DEFAULT_TTL: Final = 8 * 24 * 3600


@runtime_checkable
class Dedup(Protocol):
    def claim(self, event_id: str) -> bool:
        """True if ``event_id`` was not seen before (and is now marked seen)."""
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
        self._lock = threading.Lock()

    def claim(self, event_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            seen_at = self._seen.get(event_id)
            if seen_at is not None and (self.ttl is None or now - seen_at < self.ttl):
                return False
            self._seen[event_id] = now
            self._seen.move_to_end(event_id)
            while len(self._seen) > self.max_size:
                self._seen.popitem(last=False)
            return True

    def release(self, event_id: str) -> None:
        with self._lock:
            self._seen.pop(event_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def __repr__(self) -> str:
        return f"MemoryDedup(max_size={self.max_size}, ttl={self.ttl}, size={len(self)})"


class RedisDedup:
    """``SET <prefix><event_id> 1 NX EX <ttl>`` in Redis, shared by every process of a fleet.

    ``client`` is a ``redis.Redis`` (or pass ``url``; needs ``pip install 'ciotrack[fleet]'``).
    When Redis fails, ``fail_open=True`` (the default) processes the event anyway, since a
    duplicate is better than a lost event; False raises, and the handler answers an error."""

    def __init__(self, client: Any = None, *, url: str | None = None, prefix: str = "ciotrack:webhook:seen:",
                 ttl: int = DEFAULT_TTL, fail_open: bool = True) -> None:
        if client is None:
            if url is None:
                raise ValueError("RedisDedup needs a redis client or a url")
            import redis

            client = redis.Redis.from_url(url)
        self.client = client
        self.prefix = prefix
        self.ttl = int(ttl)
        self.fail_open = fail_open
        self._last_warning = 0.0
        self.errors = 0

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_warning > 10.0:  # throttled: a Redis outage would log every webhook
            self._last_warning = now
            logger.warning("webhook dedup: Redis failed (%s: %s); %s", type(exc).__name__, exc,
                           "processing without dedup" if self.fail_open else "refusing webhooks")

    def claim(self, event_id: str) -> bool:
        try:
            return bool(self.client.set(self.prefix + event_id, b"1", nx=True, ex=self.ttl))
        except Exception as exc:  # redis.RedisError, OSError: the module is optional, catch broadly
            self._failed(exc)
            if self.fail_open:
                return True
            raise

    def release(self, event_id: str) -> None:
        try:
            self.client.delete(self.prefix + event_id)
        except Exception as exc:
            self._failed(exc)

    def __repr__(self) -> str:
        return f"RedisDedup(prefix={self.prefix!r}, ttl={self.ttl}, fail_open={self.fail_open})"


__all__ = ["DEFAULT_TTL", "Dedup", "MemoryDedup", "RedisDedup"]
