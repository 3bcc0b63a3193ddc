"""The pipeline behind a Tracker: lanes, sender threads, flush/close/fork accounting, and what a
delivery verdict means for the operations in a batch (ack, spool, report).

Shape (after OpenTelemetry's BatchProcessor and Sentry's worker): producers push encoded operations
into the core's lanes (one per region) on their own threads; N sender threads loop ``wait ->
next_batch -> Delivery.deliver -> ack | spool | report``. The delivery loop itself (token, send,
retry, split) is :mod:`ciotrack.delivery`, delivery on the caller's thread (``sync=True``) is
:mod:`ciotrack.inline`; losses go through :mod:`ciotrack.losses`; the disk spool
(:mod:`ciotrack.spool`) talks to the pipeline through :class:`SpoolHost`'s few public methods. Every
sleep is an ``Event``/native wait that ``close()`` cuts.

Flush accounting (:mod:`ciotrack.flush_marks`): batches are taken and registered in flight under
``self._cv``, so a flush never sees an operation that is neither queued nor in flight.

The pipeline holds no reference to the Tracker facade, so a Tracker can be garbage-collected while its
pipeline drains (see :meth:`Pipeline.release`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import cast

from ciotrack._core import Batch, Core, Lane
from ciotrack.config import Config, SpoolHook
from ciotrack.delivery import DESTINATION_DOWN, Deliverable, Health, Job, Result, Verdict
from ciotrack.flush_marks import FlushMarks
from ciotrack.inline import InlineDelivery
from ciotrack.lifecycle import block_exit_signals
from ciotrack.losses import Ledger, Reason
from ciotrack.overflow import OverflowWatch
from ciotrack.ownership import SHUTDOWN, Ownership, unpark
from ciotrack.routes import RegionPending, Route, Router
from ciotrack.senders import SenderPool
from ciotrack.spool.replay import SpoolReplay
from ciotrack.stats import Stats

__all__ = ["Pipeline"]

log = logging.getLogger("ciotrack.sender")
_monotonic = time.monotonic


class Pipeline:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid = os.getpid()
        """The process this pipeline was built in (after a fork, the child's trackers rebuild once)."""
        routes = config.regions_in_use()
        self.core = Core(
            lanes=len(routes),
            # Disabled: calls are validated, then thrown away when the small queue fills.
            max_queue_ops=min(config.max_queue_ops, 1024) if config.disabled else config.max_queue_ops,
            max_queue_bytes=config.max_queue_bytes,
            max_batch_bytes=config.batch_bytes,
            on_full=config.overflow_policy,
            block_timeout=config.block_timeout,
            dedup_ttl=config.dedup_ttl,
            dedup_max_entries=config.dedup_max_entries,
            dedup_events=config.dedup_events,
            metrics=config.metrics,
        )
        self.losses = Ledger(self.core, on_drop=config.on_drop, on_error=config.on_error, logger=log,
                             forget=self.core.forget_lost)
        self._stop = threading.Event()
        # The API health model exists with the disk spool: it decides between replaying and probing.
        self.health = Health(None) if config.spool_dir is not None and not config.disabled else None
        self.router = Router(config, self.core, stop=self._stop, health=self.health, on_split=self._split)
        self.routes = self.router.routes
        self.losses.cause = self.router.problem
        self.lane_of: dict[str, int] = {r.route: r.index for r in self.routes if r.route != "auto"}
        self._cv = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        # Fixed concurrency starts all its threads; adaptive one per lane, more as its limits grow (up
        # to max_in_flight per lane: 1..128 by validation).
        self._senders = SenderPool(self._sender_loop, initial=config.senders or len(self.routes),
                                   maximum=config.senders or config.max_in_flight * len(self.routes))
        self.router.on_grow = self._senders.grow
        self._flushing = 0
        self._draining = False
        self._closed = False
        self._forked_away = False
        self._inline = config.sync or config.disabled  # deliver on the caller's thread in flush()/close()
        self._batch_bytes = config.batch_bytes
        self._min_bytes = max(1, int(config.batch_bytes * 0.9))
        self._linger = config.flush_interval
        self._wait_timeout = config.flush_interval / len(self.routes)
        self._close_done = threading.Event()
        self._close_result = True
        self._closer: threading.Thread | None = None
        self._marks = FlushMarks(self._cv, self.routes, self.core)
        self._owners = Ownership(self._cv, self.core, self.losses, self._to_spool, self._finish)
        self._overflow = OverflowWatch(config.overflow_policy, self.core, self.routes, self.losses, self._to_spool)
        self._on_caller = InlineDelivery(self.routes, monotonic=_monotonic, take=self._take, run_job=self._run_job,
                                         targets=self._marks.targets, wait_done=self._marks.wait)
        self.replay = SpoolReplay(self, config, self.health) if self.health is not None else None
        self.spool: SpoolHook | None = self.replay if self.replay is not None else config.spool
        """Where operations go when they cannot be delivered now (None: reported as lost)."""

    # -- setup -----------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the sender threads (idempotent). False when they cannot start (e.g. at interpreter
        shutdown on Python 3.12+): flush()/close() then deliver on the calling thread."""
        if self._inline or self._senders.threads:
            return True
        with self._start_lock:
            if self._senders.threads or self._closed:
                return True
            if not self._senders.start():
                self._inline = True
                return False
            if self.replay is not None:
                self.replay.start()
        return True

    # -- the spool's view (SpoolHost) -------------------------------------------------------------

    @property
    def lane_count(self) -> int:
        return len(self.routes)

    def lane(self, index: int) -> Lane:
        return self.routes[index].lane

    def region_of(self, index: int) -> str:
        return self.routes[index].name

    def lane_for(self, region: str) -> int | None:
        """The lane serving ``region`` (None: not a region this pipeline serves)."""
        return self.router.lane_for(region)

    def finished(self, targets: Sequence[int]) -> bool:
        """Every operation below ``targets[lane]`` (push ordinals) is finished: delivered, failed or spooled."""
        with self._cv:
            return self._marks.done(targets)

    def idle(self) -> bool:
        with self._cv:
            return all(not r.in_flight and not len(r.lane) for r in self.routes)

    @property
    def draining(self) -> bool:
        """The Tracker was collected: senders deliver what is queued, then exit (no new replay)."""
        return self._draining

    # -- sender threads ---------------------------------------------------------------------------

    def _sender_loop(self, number: int) -> None:
        block_exit_signals()
        turn = number
        while not self._stop.is_set():
            try:
                turn = self._sender_round(turn)
                if turn < 0:
                    return
            except BaseException as exc:  # the job was put back (_run_job); dying would stop delivery for good
                self.losses.log.warning("sender", "ciotrack: sender thread %d: unexpected %s; batch put back, "
                                        "delivery goes on", number, type(exc).__name__, exc_info=True)
                self._stop.wait(0.05)  # a bug that repeats must not spin

    def _sender_round(self, turn: int) -> int:
        """One pass over the lanes; the next turn, or -1 when a draining pipeline is done."""
        routes = self.routes
        count = len(routes)
        policy = self.config.overflow_policy
        if policy == "spool" or policy == "drop_oldest":
            self.watch_overflow()
        served = False
        full = 0  # lanes with every slot taken
        force = self._flushing > 0 or self._draining
        senders = self._senders
        for k in range(count):
            route = routes[(turn + k) % count]
            slots = route.concurrency
            if not slots.try_acquire():
                full += 1
                continue  # this lane already has as many batches in flight as its limit
            job = unpark(route)  # put back by an interrupted delivery: it goes first
            if job is None:
                batch = self._take(route, force)
                job = Job(batch) if batch is not None else None
            if job is None:
                slots.release()
                continue
            senders.busy += 1
            try:
                if route.lane.queued_bytes() >= self._min_bytes and not self._stop.is_set():
                    senders.grow(slots)
                self._run_job(route, job, None, count_interruption=True)
            finally:
                senders.busy -= 1
                slots.release()
            served = True
        turn += 1
        if served:
            return turn
        if self._draining and self.idle():
            return -1
        routes[turn % count].idle_wait(self._min_bytes, self._wait_timeout, self._linger, no_slot=full == count)
        return turn

    def _take(self, route: Route, force: bool) -> Batch | None:
        lane = route.lane
        queued = lane.queued_bytes()
        if queued == 0 and not len(lane):
            return None
        now = _monotonic()
        if not (force or queued >= self._min_bytes or now - route.last_take >= self._linger):
            return None
        with self._cv:
            batch = lane.next_batch(self._batch_bytes)
            if batch is None:
                return None
            route.in_flight[id(batch)] = batch
            route.last_take = now
        return batch

    # -- what a verdict means ---------------------------------------------------------------------

    def _run_job(self, route: Route, job: Job, deadline: float | None, *, count_interruption: bool = False) -> bool:
        """Deliver ``job`` and act on each piece's verdict. False when parked at ``deadline``. Interrupted
        by any exception (KeyboardInterrupt, a Celery soft time limit, a bug), unfinished pieces are
        parked with their retry state first (``count_interruption``: as one more attempt)."""
        owned = self._owners.start(job)  # _split keeps it current
        finished = True
        try:
            delivery = self.router.delivery(route)
            for result in delivery.deliver(job, deadline):
                batch = cast(Batch, result.job.batch)  # the jobs we hand to deliver() hold native batches
                if not self._settle(route, result, batch):
                    finished = False
                owned.pop(id(batch), None)
        except RegionPending:  # inline only: the deadline passed before the region was known
            self._owners.put_back(route, owned, False)
            return False
        except BaseException:
            self._owners.put_back(route, owned, count_interruption)
            raise
        finally:
            self._owners.end()
        return finished

    def _settle(self, route: Route, result: Result, batch: Batch) -> bool:
        """Act on one piece's verdict (ack, report, spool, park). False when parked."""
        verdict = result.verdict
        if not self._owners.claim(batch):
            self._owners.settle_abandoned(route, batch, verdict is Verdict.DELIVERED)
            return True
        attempts = result.job.attempts
        if verdict is Verdict.DELIVERED:
            failed: list[int] = []
            try:
                if result.failures:
                    ops = batch.ops()
                    by_reason: dict[str, list[bytes]] = {}
                    for i, why in result.failures:
                        by_reason.setdefault(why, []).append(ops[i])
                        failed.append(i)
                    for why, rejected in by_reason.items():
                        self.losses.fail(Reason.REJECTED, rejected, status=result.status, detail=why,
                                         attempts=attempts + 1, region=route.name)
            finally:  # even when a hook raised on the main thread: never left in flight
                # Reported before finished: a flush() that returns True has seen on_error run.
                self._finish(route, batch, failed)
        elif verdict is Verdict.FAILED:
            self._fail(route, batch, Reason.REJECTED, result.status, result.reason, attempts + 1)
        elif verdict is Verdict.EXHAUSTED:
            reason = Reason.UNREACHABLE if result.reason == DESTINATION_DOWN else Reason.RETRIES_EXHAUSTED
            self._give_up(route, batch, reason, result.status, result.reason, attempts,
                          sent=result.job.first_attempt is not None)
        elif verdict is Verdict.DEADLINE:
            self._owners.park(route, result.job)
            return False
        else:  # STOPPED: the pipeline is closing and this piece is not delivered
            self._give_up(route, batch, Reason.SHUTDOWN, None, SHUTDOWN, attempts,
                          sent=result.job.first_attempt is not None)
        return True

    def _split(self, route: Route, parent: Deliverable, first: Job, second: Job) -> None:
        with self._cv:
            in_flight = route.in_flight
            in_flight.pop(id(parent), None)
            in_flight[id(first.batch)] = cast(Batch, first.batch)
            in_flight[id(second.batch)] = cast(Batch, second.batch)
        self._owners.split(parent, first, second)  # on the delivering thread

    def _finish(self, route: Route, batch: Batch, failed: Sequence[int]) -> None:
        self.core.ack(batch, failed)
        key = id(batch)
        with self._cv:
            route.in_flight.pop(key, None)
            self._owners.finished(key)
            self._cv.notify_all()

    def _fail(self, route: Route, batch: Batch, reason: Reason, status: int | None, detail: str,
              attempts: int) -> None:
        try:
            self.losses.fail(reason, batch.ops(), status=status, detail=detail, attempts=attempts, region=route.name)
        finally:  # a hook's KeyboardInterrupt on the main thread goes on, the batch finished (and reported)
            self._finish(route, batch, range(batch.count))

    def _give_up(self, route: Route, batch: Batch, reason: Reason, status: int | None, detail: str,
                 attempts: int, *, sent: bool) -> None:
        """No more attempts for ``batch`` (retries exhausted, destination down, stopping): spool it, or
        report it failed. ``sent``: a request was made for it (only then does a replay count towards
        the dead letters: a batch given up untried says nothing about its operations)."""
        ops = batch.ops()
        if sent and self.replay is not None:
            self.replay.poison.attempted(ops)
        if self._to_spool(route, ops):
            # Handed over, not lost (the spool replays it later); counted as spooled, not delivered.
            self._finish(route, batch, range(batch.count))
            return
        self._fail(route, batch, reason, status, detail, attempts)

    def _to_spool(self, route: Route, ops: list[bytes]) -> bool:
        spool = self.spool
        if spool is None or not ops:
            return False
        try:
            taken = spool.append(ops, region=route.name)
        except Exception:
            self.losses.log.warning("spool", "ciotrack: spooling %d operation(s) failed", len(ops), exc_info=True)
            return False
        # Accounted for either way: what the spool did not write (a refusal, dead letters) it reported.
        self.core.incr("spooled", len(ops) if taken is None else taken)
        return True

    # -- overflow policies: the sender-side half (ciotrack.overflow) -----------------------------

    def watch_overflow(self, force: bool = False) -> None:
        self._overflow.watch(force)

    def drain_overflow(self) -> None:
        self._overflow.drain()

    # -- flush / close ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """True once every operation accepted before the call is delivered or finally failed."""
        if self.forked_here():
            return True  # nothing queued here is ours: the parent delivers it
        deadline = None if timeout is None else _monotonic() + max(0.0, timeout)
        targets = self._marks.targets()
        if self.config.disabled:
            for route in self.routes:
                route.lane.clear()
            return True
        self.watch_overflow(True)
        if self._inline or not self._senders.alive():
            return self._on_caller.flush(self.replay, targets, deadline)
        if threading.current_thread() in self._senders:
            # Called from a hook on a sender thread: waiting would wait for this very thread.
            deadline = _monotonic()
        with self._cv:
            self._flushing += 1
        try:
            self.core.wake()
            return self._marks.wait(targets, deadline, rewake=True)
        finally:
            with self._cv:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (None: until every batch is delivered or has finally failed), then
        stop the senders and close the destinations. Idempotent. What could not be delivered is spooled
        or reported (``on_drop("shutdown")`` for never-sent operations, ``on_error`` for started batches)."""
        if self.forked_here():  # before self._cv: a parent thread may have held it at the fork
            return True
        with self._cv:
            first = not self._closed
            if first:
                self._closed = True
                self._closer = threading.current_thread()
        if not first:
            return self._await_close(timeout)
        try:
            self._close_result = self._close(timeout)
        finally:
            self._close_done.set()
        return self._close_result

    def _await_close(self, timeout: float | None) -> bool:
        """A second close() waits for the first, within its own ``timeout``, and returns its result. The
        closing thread (a hook) or a sender (the first close() may wait for it) cannot wait: False."""
        current = threading.current_thread()
        if current is self._closer or current in self._senders:
            return self._close_done.is_set() and self._close_result
        return self._close_done.wait(timeout) and self._close_result

    def _close(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else _monotonic() + max(0.0, timeout)
        if self.replay is not None:
            self.replay.stop_replay(deadline)
            # Keep part of the budget for spooling what delivery cannot finish; with the API known to
            # be down, waiting is pointless: spool at once.
            if self.health is not None and self.health.down:
                timeout = 0.0
            elif deadline is not None:  # from what stopping the spooler left of the budget
                timeout = max(0.0, deadline - _monotonic())
                timeout -= min(0.5, 0.2 * timeout)
        self.losses.closing = True  # a hook's SystemExit must not cut close()'s accounting short
        flushed = False
        try:  # even when a KeyboardInterrupt cuts an inline flush short: nothing queued left unaccounted
            flushed = self.flush(timeout)
        finally:
            self._wind_down(deadline, Reason.SHUTDOWN)
        return flushed

    def _wind_down(self, deadline: float | None, leftover_reason: Reason) -> None:
        """Stop, then account for everything not delivered: parked and abandoned batches and what is
        still queued are spooled, or reported (``leftover_reason`` for never-sent operations)."""
        self._stop.set()
        self.core.close()
        self.router.close_limiters()
        self._senders.join(deadline)
        for route in self.routes:
            while route.parked:
                job = route.parked.pop(0)
                self._give_up(route, cast(Batch, job.batch), Reason.SHUTDOWN, None, SHUTDOWN, job.attempts,
                              sent=job.first_attempt is not None)
        self._owners.abandon_in_flight(self.routes)
        for route in self.routes:
            leftover = route.lane.drain_ops()
            if leftover and not self._to_spool(route, leftover) and not self.config.disabled:
                self.losses.drop(leftover_reason, len(leftover))
        self.watch_overflow(True)
        if self.replay is not None:
            self.replay.close(deadline)
        self.router.close()
        self.losses.log.flush()  # the totals of loss lines held back within the last interval

    @property
    def closed(self) -> bool:
        return self._closed

    def release(self) -> None:
        """The Tracker was garbage-collected: senders deliver what is queued, then exit on their own."""
        if self._closed or self.forked_here():
            return
        if not self._senders.threads or self._inline:
            # Nothing will deliver any more, and the exit handler skips a closed pipeline: account for
            # everything now, without a request. A sync flush(timeout) may have parked a batch (in
            # flight, not in the lane), and replayed operations sit in the lanes while their segment
            # stays claimed: spool what a spool takes (so replay's segments can go), report the rest.
            with self._cv:
                if self._closed:
                    return
                self._closed = True
            self.losses.closing = True
            if self.replay is not None:
                self.replay.stop_replay()
            self._wind_down(_monotonic(), Reason.RELEASED)
            return
        self._draining = True
        self.core.wake()

    def forked_here(self) -> bool:
        """True in a process forked from the one that built this pipeline, which is then forgotten: a
        fork that skipped Python's at-fork hooks (a C ``fork()``, as uWSGI's) is only seen here. Closing
        or flushing the parent's copy would spool its queue, which the parent delivers: duplicates."""
        if self.pid == os.getpid():
            return False
        if not self._forked_away:
            self.forget_after_fork()
        return True

    def forget_after_fork(self) -> None:
        """In a forked child: this pipeline belongs to the parent (which delivers its queue). Never
        touch its locks (a parent thread may have held them at fork time) or its sockets."""
        self._forked_away = True
        self._senders.forget()
        if self.replay is not None:
            self.replay.forget_after_fork()

    def stats(self) -> Stats:
        # No lock: len() of a dict is atomic, and a gauge read a moment early is still a fair gauge
        # (also safe from a hook, or after a fork where a parent thread may hold self._cv).
        batches = [batch for route in self.routes for batch in list(route.in_flight.values())]
        return Stats.from_core(self.core.stats(), lane_regions=[r.name for r in self.routes],
                               in_flight=len(batches), in_flight_ops=sum(batch.count for batch in batches),
                               bucket_tokens=self.router.tokens(),
                               concurrency=self.router.concurrency(), metrics_enabled=self.config.metrics,
                               destination=self.config.destination_kind)
