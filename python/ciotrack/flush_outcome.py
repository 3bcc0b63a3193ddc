"""What ``Tracker.flush_result()`` answers: did the flush finish, and how did the operations end?

``flush()`` keeps returning a bool (True once every operation accepted before the call is *finished*:
delivered, or finally failed, or spooled). That cannot tell a success from a wrong API key, whose
operations "finish" at once by failing. :class:`FlushResult` can::

    result = tracker.flush_result(timeout=10)
    if not result.ok:
        log.error("tracking: %s", result)   # FlushResult(done=True, delivered=0, failed=3, ... problem=...)

The counts are differences of the tracker's counters between the start and the end of the call, so
operations other threads queued meanwhile count too; in the common case (a script's or a request's
final flush) they are exactly that flush's operations.
"""

from __future__ import annotations

from dataclasses import dataclass

from ciotrack.stats import Stats

__all__ = ["FlushResult", "counts"]


def counts(stats: Stats) -> tuple[int, int, int, int]:
    """``(delivered, failed, dropped, spooled)`` totals of a snapshot."""
    return stats.delivered, stats.failed_total, sum(stats.dropped.values()), stats.spooled


@dataclass(frozen=True, slots=True)
class FlushResult:
    done: bool
    """What ``flush()`` returns: every operation accepted before the call finished (False: timed out)."""
    delivered: int = 0
    """Operations Customer.io (the destination) accepted during the call."""
    failed: int = 0
    """Operations that finally failed during the call (``on_error`` has seen them)."""
    dropped: int = 0
    """Operations dropped before sending during the call (``on_drop`` has seen them)."""
    spooled: int = 0
    """Operations handed to the disk spool during the call (replayed later, not lost)."""
    problem: str | None = None
    """A delivery problem still going on at the end (``connection refused to http://...``), or None."""

    @property
    def ok(self) -> bool:
        """Finished, and nothing failed, was dropped or is waiting in the spool."""
        return self.done and not self.failed and not self.dropped and not self.spooled

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def between(cls, before: tuple[int, int, int, int], after: tuple[int, int, int, int], *, done: bool,
                problem: str | None) -> FlushResult:
        delivered, failed, dropped, spooled = (max(0, b - a) for a, b in zip(before, after, strict=True))
        return cls(done, delivered, failed, dropped, spooled, problem)
