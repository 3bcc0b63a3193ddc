"""The overflow policies' sender-side half: what the senders do between batches for ``on_full``.

The core applies the policy on the caller's thread (``Core.push_*``: refuse, evict the oldest, block,
or hand the op to an overflow list). Two policies leave work for Python: ``spool`` (take the overflow
lists and write them to the disk spool) and ``drop_oldest`` (the core counts evictions as
``dropped_oldest`` but cannot call ``on_drop`` from the hot path). ``drop_newest`` and ``block``
report their drops on the caller's thread (``Tracker._refused``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ciotrack.sender import Pipeline, ThrottledLog

__all__ = ["EvictionReporter", "overflow_watcher"]

_monotonic = time.monotonic


class EvictionReporter:
    """Reports ``drop_oldest`` evictions (the core counts them as ``dropped_oldest`` on the caller's
    thread) to ``on_drop("evicted_oldest", n)`` and a throttled warning, from the sender side."""

    def __init__(self, pipeline: Pipeline, warn: ThrottledLog) -> None:
        self._pipeline = pipeline
        self._warn = warn
        self._lock = threading.Lock()
        self._seen = 0
        self._next = 0.0

    def __call__(self, force: bool = False) -> None:
        now = _monotonic()
        if not force and now < self._next:
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._next = now + 0.2
            counters = self._pipeline.core.stats()["counters"]
            count = int(counters.get("dropped_oldest", 0))
            new, self._seen = count - self._seen, count
        finally:
            self._lock.release()
        if new > 0:
            self._warn.warning("evicted", "ciotrack: queue full (policy drop_oldest); %d oldest operation(s) dropped",
                               new)
            hook = self._pipeline.config.on_drop
            if hook is not None:
                self._pipeline.call_hook(hook, "evicted_oldest", new)


def overflow_watcher(pipeline: Pipeline) -> Callable[..., None] | None:
    """What the senders call between batches for the overflow policy: spool the overflow lists
    (``spool``), report evictions (``drop_oldest``), or nothing."""
    policy = pipeline.config.overflow_policy
    if policy == "spool":
        return lambda force=False: pipeline.drain_overflow()
    if policy == "drop_oldest":
        return EvictionReporter(pipeline, pipeline.log)
    return None
