"""Who accounts for a batch in flight: exactly one owner, so a batch is never lost nor reported twice.

A batch taken from a lane is owned by the thread delivering it (a sender, or the caller of an inline
flush). Two things can separate them:

* **close()/exit gives up on the thread**: it is stuck in a request past the deadline (a stalled or
  trickling receiver, SIGTERM/SIGINT). ``close()`` then *abandons* the batch: it spools a copy or
  reports it lost (``shutdown_in_flight``), and the thread's late verdict is not reported again.
* **the delivering thread is interrupted** (a KeyboardInterrupt or a Celery soft time limit during
  an inline flush, a bug on a sender): the pieces it had not finished are *put back* (parked, with
  their retry state), so the next flush or sender delivers them.

The thread marks a batch *settling* (:meth:`Ownership.claim`) before it reports it; ``close()`` never
abandons a settling batch, and a thread never settles an abandoned one. Both checks happen under
the pipeline's condition lock, which makes the hand-over atomic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ciotrack.delivery import Deliverable, Job
from ciotrack.losses import Ledger, Reason

if TYPE_CHECKING:
    from ciotrack._core import Batch, Core
    from ciotrack.routes import Route

__all__ = ["Ownership", "unpark"]

IN_FLIGHT = "shutdown_in_flight: still in a request at the close()/exit deadline"
SHUTDOWN = "shutdown: not delivered before close()/exit deadline"


class Ownership:
    """The settling/abandoned marks of one pipeline's batches in flight (keys: ``id(batch)``, stable
    while the batch is in ``route.in_flight``), and the pieces each thread is delivering."""

    def __init__(self, cv: threading.Condition, core: Core, losses: Ledger,
                 to_spool: Callable[[Route, list[bytes]], bool],
                 finish: Callable[[Route, Batch, Sequence[int]], None]) -> None:
        self._cv = cv
        self._core = core
        self._losses = losses
        self._to_spool = to_spool
        self._finish = finish  # ack the batch and take it out of flight (calls finished())
        self._settling: set[int] = set()
        self._abandoned: dict[int, bool] = {}  # True: close() spooled a copy; False: reported lost
        self._pieces = threading.local()  # .owned: the unfinished pieces of the job this thread delivers
        self._jobs: dict[int, Job] = {}  # every thread's pieces in flight (close() reads their state)

    # -- the delivering thread --------------------------------------------------------------------

    def start(self, job: Job) -> dict[int, Job]:
        """This thread starts delivering ``job``: the pieces it owns (kept current by :meth:`split`)."""
        owned = {id(job.batch): job}
        self._pieces.owned = owned
        self._jobs[id(job.batch)] = job
        return owned

    def end(self) -> None:
        self._pieces.owned = None

    def split(self, parent: Deliverable, first: Job, second: Job) -> None:
        """A 413 split on the delivering thread: it now owns the halves' jobs (the ones the delivery loop
        sends, so their retry state and ``sending`` are what close() and put_back() see)."""
        owned: dict[int, Job] | None = getattr(self._pieces, "owned", None)
        self._jobs.pop(id(parent), None)
        for job in (first, second):
            self._jobs[id(job.batch)] = job
        if owned is not None:
            owned.pop(id(parent), None)
            owned[id(first.batch)] = first
            owned[id(second.batch)] = second

    def claim(self, batch: Batch) -> bool:
        """This thread reports ``batch`` (True), unless close() already did (False)."""
        key = id(batch)
        with self._cv:
            if key in self._abandoned:
                return False
            self._settling.add(key)
            return True

    def settle_abandoned(self, route: Route, batch: Batch, delivered: bool) -> None:
        """The late verdict of a batch close() already spooled a copy of, or reported lost: not reported
        again. Delivered after being reported lost, it stays counted ``failed`` (``on_error`` ran) and
        is counted ``delivered_after_shutdown`` too, so ``delivered + failed`` still adds up."""
        if delivered:
            if self._abandoned.get(id(batch), False):  # a spooled copy replays later: same event ids
                self._finish(route, batch, ())
                return
            self._core.incr("delivered_after_shutdown", batch.count)
            self._losses.log.warning("late", "ciotrack: %d operation(s) reported lost at close() were delivered "
                                     "after all (counted failed and delivered_after_shutdown)", batch.count)
        self._finish(route, batch, range(batch.count))

    def park(self, route: Route, job: Job) -> None:
        """A DEADLINE verdict: the job waits in ``route.parked`` with its retry state."""
        with self._cv:
            self._settling.discard(id(job.batch))
            route.parked.append(job)

    def put_back(self, route: Route, owned: dict[int, Job], count_interruption: bool) -> None:
        """Park the pieces of an interrupted delivery that are still this thread's to finish."""
        with self._cv:
            for key, job in owned.items():
                if key in route.in_flight and key not in self._abandoned:
                    self._settling.discard(key)
                    if count_interruption:
                        job.attempts += 1
                    route.parked.append(job)

    def finished(self, key: int) -> None:
        """``id(batch)`` left ``route.in_flight`` (called with the condition lock held)."""
        self._settling.discard(key)
        self._abandoned.pop(key, None)
        self._jobs.pop(key, None)

    # -- close() ----------------------------------------------------------------------------------

    def abandon_in_flight(self, routes: Sequence[Route]) -> None:
        """After ``close()`` joined the senders: a batch still in flight belongs to a thread stuck in a
        request past the deadline. Nobody else will account for it: spool a copy (should the request
        succeed after all, the replay only repeats event ids, which Customer.io deduplicates), or
        report it lost (``shutdown_in_flight``). A batch its thread is settling right now (close()
        called from its hook) is left to it."""
        for route in routes:
            with self._cv:
                stuck = [batch for key, batch in route.in_flight.items()
                         if key not in self._settling and key not in self._abandoned]
                for batch in stuck:
                    self._abandoned[id(batch)] = False
            for batch in stuck:
                ops = batch.ops()
                if self._to_spool(route, ops):
                    self._abandoned[id(batch)] = True
                    continue
                job = self._jobs.get(id(batch))
                if job is not None and job.sending:  # the attempts that answered "retry", and this one
                    self._losses.fail(Reason.SHUTDOWN_IN_FLIGHT, ops, status=None, detail=IN_FLIGHT,
                                      attempts=job.attempts + 1, region=route.name)
                else:  # waiting between attempts, or a split half not sent yet: no request to be stuck in
                    self._losses.fail(Reason.SHUTDOWN, ops, status=None, detail=SHUTDOWN,
                                      attempts=job.attempts if job is not None else 0, region=route.name)


def unpark(route: Route) -> Job | None:
    """The oldest parked job of ``route`` (None: none). ``list.pop`` is atomic: senders and an inline
    flush may race for it."""
    try:
        return route.parked.pop(0)
    except IndexError:
        return None
