"""Delivery on the caller's thread: ``flush()``/``close()`` of a ``sync=True`` or ``disabled`` tracker,
or of one whose sender threads could not start (interpreter shutdown on Python 3.12+).

The caller's deadline holds for the request itself, not only between requests: delivery runs inside
:func:`~ciotrack.destinations.http.caller_deadline`, so the built-in HTTP destination caps its
connect/read timeouts and its watchdog at the time left (a silent endpoint no longer holds a
``flush(1)`` for the whole 15 s read timeout). A request cut short is a retryable attempt without an
answer; the delivery loop then answers DEADLINE (retries left) and the job is parked with its retry
state, as a threaded sender's batch stays in flight past a flush deadline: the next flush resumes it,
and ``close()`` spools it or reports it (``shutdown``). With no retry left, it is given up like any
exhausted batch (spooled or reported). Nothing is dropped silently either way.

A custom destination's ``send`` has no deadline parameter: the deadline is checked before each job and
each retry, and a destination that makes its own requests reads what is left with
:func:`ciotrack.destinations.time_left` to cap them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ciotrack.delivery import Job
from ciotrack.destinations.http import caller_deadline
from ciotrack.ownership import unpark

if TYPE_CHECKING:
    from ciotrack._core import Batch
    from ciotrack.routes import Route
    from ciotrack.spool.replay import SpoolReplay

__all__ = ["InlineDelivery"]


class InlineDelivery:
    """A pipeline's inline flush. It takes batches and runs jobs through the pipeline's own
    ``take``/``run_job`` (the same flush accounting, ownership and verdicts as its sender threads)."""

    def __init__(self, routes: Sequence[Route], *, monotonic: Callable[[], float],
                 take: Callable[[Route, bool], Batch | None],
                 run_job: Callable[[Route, Job, float | None], bool],
                 targets: Callable[[], list[int]],
                 wait_done: Callable[[list[int], float | None], bool]) -> None:
        self._routes = routes
        self._monotonic = monotonic
        self._take = take
        self._run_job = run_job  # False: the job was parked at the deadline
        self._targets = targets
        self._wait_done = wait_done

    def flush(self, replay: SpoolReplay | None, targets: list[int], deadline: float | None) -> bool:
        """Deliver what was accepted before the flush (``targets``) on this thread, by ``deadline``."""
        with caller_deadline(deadline):  # the spool's health probe keeps the deadline too
            if replay is not None:  # spooled ops first, as far as the deadline allows
                return replay.flush_inline(self._flush, deadline)
            return self._flush(targets, deadline)

    def _flush(self, targets: list[int] | None, deadline: float | None) -> bool:
        targets = self._targets() if targets is None else targets
        self._deliver(targets, deadline)
        return self._wait_done(targets, deadline)

    def _deliver(self, targets: list[int], deadline: float | None) -> None:
        monotonic = self._monotonic
        for route, target in zip(self._routes, targets, strict=False):
            while route.parked:
                if deadline is not None and monotonic() >= deadline:
                    return
                job = unpark(route)
                if job is not None and not self._run_job(route, job, deadline):
                    return
            while route.lane.taken() < target:
                if deadline is not None and monotonic() >= deadline:
                    return
                batch = self._take(route, True)
                if batch is None:
                    break
                if not self._run_job(route, Job(batch), deadline):
                    return
