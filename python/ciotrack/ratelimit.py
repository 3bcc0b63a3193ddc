"""The rate-limiter seam: one interface for the in-process bucket and a limiter shared by a fleet.

Every request the delivery loop makes first takes a token from a :class:`Limiter`. The in-process
implementation is the native GCRA bucket (:class:`ciotrack._core.Bucket`: lock-free, waits with the
GIL released); a limiter kept in Redis implements the same four methods, so the call sites do not
change when many processes share one workspace limit.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ciotrack._core import Bucket

__all__ = ["Limiter", "local_limiter"]


@runtime_checkable
class Limiter(Protocol):
    """Paces requests to one (workspace, region).

    ``acquire(timeout)`` takes one slot, waiting up to ``timeout`` seconds; False on timeout or after
    ``close()`` (the caller checks its own deadline and stop flag, then asks again). ``pause(seconds)``
    hands out nothing for that long (a 429 told us to slow down); it extends a pause, never shortens
    one. ``tokens()`` is a gauge of the slots available now. ``close()`` wakes every waiter with False.
    """

    def acquire(self, timeout: float) -> bool: ...

    def pause(self, seconds: float) -> None: ...

    def tokens(self) -> float: ...

    def close(self) -> None: ...


def local_limiter(rate: float, burst: float) -> Limiter:
    """The in-process limiter: ``rate`` requests/s with bursts of ``burst`` (starts full)."""
    return Bucket(rate, burst)
