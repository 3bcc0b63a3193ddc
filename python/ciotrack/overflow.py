"""Overflow policies, the sender-side half: what full lanes refused or evicted, handed to the spool or
reported to the loss ledger between batches (and at flush/close), off the caller's hot path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ciotrack.losses import Ledger, Reason

if TYPE_CHECKING:
    from ciotrack._core import Core
    from ciotrack.routes import Route

__all__ = ["OverflowWatch"]

_monotonic = time.monotonic


class OverflowWatch:
    """``spool`` hands what full lanes refused to the spool; ``drop_oldest`` reports the core's
    evictions (counted on the caller's thread, where calling ``on_drop`` would slow the hot path) to
    the ledger. ``drop_newest``/``block`` report their drops on the caller's thread
    (``Tracker._refused``)."""

    def __init__(self, policy: str, core: Core, routes: Sequence[Route], losses: Ledger,
                 to_spool: Callable[[Route, list[bytes]], bool]) -> None:
        self.policy = policy
        self._core = core
        self._routes = routes
        self._losses = losses
        self._to_spool = to_spool
        self._lock = threading.Lock()  # one drain at a time keeps overflow records in order
        self._evictions_seen = 0
        self._evictions_next = 0.0

    def watch(self, force: bool = False) -> None:
        if self.policy == "spool":
            self.drain()
        elif self.policy == "drop_oldest":
            self._report_evictions(force)

    def drain(self) -> None:
        """Under ``on_full="spool"``: hand operations refused by a full lane to the spool (per lane, so
        each goes under its own region)."""
        with self._lock:
            for route in self._routes:
                ops = self._core.take_overflow(route.index)
                if ops and not self._to_spool(route, ops):
                    self._core.forget_lost(ops)  # never sent: sending them again is not a duplicate
                    self._losses.drop(Reason.QUEUE_FULL, len(ops), detail="no spool took them")

    def _report_evictions(self, force: bool) -> None:
        now = _monotonic()
        if not force and now < self._evictions_next:
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._evictions_next = now + 0.2
            count = int(self._core.stats()["counters"].get(Reason.EVICTED_OLDEST.counter, 0))
            new, self._evictions_seen = count - self._evictions_seen, count
        finally:
            self._lock.release()
        if new > 0:
            self._losses.drop(Reason.EVICTED_OLDEST, new, counted=True)
