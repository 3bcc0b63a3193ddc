"""Flush accounting: when has every operation accepted before a flush finished?

Each lane counts operations ever ``pushed()`` and ever ``taken()`` (into a batch, or evicted); an
operation's take ordinal equals its push ordinal (FIFO). A flush started when a lane had pushed ``T``
operations is complete for that lane once ``taken() >= T`` and no batch holding an ordinal below ``T``
is still in flight. The pipeline takes batches and registers them in flight under the same condition
(:class:`FlushMarks` waits on it), so a flush never sees an operation that is neither queued nor in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from ciotrack._core import Core
from ciotrack.routes import Route

__all__ = ["FlushMarks"]

_monotonic = time.monotonic


class FlushMarks:
    """The pipeline's flush targets and the wait for them (on the pipeline's condition)."""

    def __init__(self, cv: threading.Condition, routes: Sequence[Route], core: Core) -> None:
        self._cv = cv
        self._routes = routes
        self._core = core

    def targets(self) -> list[int]:
        """Each lane's ``pushed()`` now: what a flush started now waits for."""
        return [route.lane.pushed() for route in self._routes]

    def done(self, targets: Sequence[int]) -> bool:
        """Every operation below ``targets`` finished (called with the condition held)."""
        for route, target in zip(self._routes, targets, strict=False):
            if route.lane.taken() < target:
                return False
            for batch in route.in_flight.values():
                if batch.start < target:
                    return False
        return True

    def wait(self, targets: list[int], deadline: float | None, rewake: bool = False) -> bool:
        """Wait until :meth:`done` (True) or ``deadline`` (False). ``rewake``: wake the senders each round."""
        with self._cv:
            while not self.done(targets):
                # Bounded waits: drop_oldest evictions and a sender that missed the wake-up (it was
                # between its readiness check and its wait) do not notify us.
                wait = 0.05
                if deadline is not None:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        return False
                    wait = min(wait, remaining)
                self._cv.wait(wait)
                if rewake:
                    self._core.wake()
            return True
