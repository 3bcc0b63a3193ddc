"""The pipeline behind a Tracker: lanes, sender threads, flush/close/fork accounting, and what a
delivery verdict means for the operations in a batch (ack, spool, report).

Shape (after OpenTelemetry's BatchProcessor and Sentry's worker): producers push encoded operations
into the core's lanes (one per region) on their own threads; N sender threads loop ``wait ->
next_batch -> Delivery.deliver -> ack | spool | report``. The delivery loop itself (token, send,
retry, split) is :mod:`ciotrack.delivery`; losses go through :mod:`ciotrack.losses`; the disk spool
(:mod:`ciotrack.spool`) talks to the pipeline through :class:`SpoolHost`'s few public methods. Every
sleep is an ``Event``/native wait that ``close()`` cuts.

Flush accounting. Each lane counts operations ever ``pushed()`` and ever ``taken()`` (into a batch, or
evicted); an operation's take ordinal equals its push ordinal (FIFO). A flush started when a lane had
pushed ``T`` operations is complete for that lane once ``taken() >= T`` and no batch holding an ordinal
below ``T`` is still in flight. Batches are taken and registered in flight under ``self._cv`` so a
flush never sees an operation that is neither queued nor in flight.

The pipeline holds no reference to the Tracker facade, so a Tracker can be garbage-collected while its
pipeline drains (see :meth:`Pipeline.release`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import cast

from ciotrack._core import Batch, Core, Lane
from ciotrack.config import Config, SpoolHook
from ciotrack.delivery import DESTINATION_DOWN, Deliverable, Health, Job, Verdict
from ciotrack.lifecycle import block_exit_signals
from ciotrack.losses import Ledger, Reason
from ciotrack.routes import Route, Router
from ciotrack.senders import SenderPool
from ciotrack.spool.replay import SpoolReplay
from ciotrack.stats import Stats

__all__ = ["Pipeline"]

log = logging.getLogger("ciotrack.sender")
_monotonic = time.monotonic
_SHUTDOWN = "shutdown: not delivered before close()/exit deadline"


class Pipeline:
    def __init__(self, config: Config) -> None:
        self.config = config
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
        self.losses = Ledger(self.core, on_drop=config.on_drop, on_error=config.on_error, logger=log)
        self._stop = threading.Event()
        # The API health model exists with the disk spool: it decides between replaying and probing.
        self.health = Health(None) if config.spool_dir is not None and not config.disabled else None
        self.router = Router(config, self.core, stop=self._stop, health=self.health, on_split=self._split)
        self.routes = self.router.routes
        self.losses.cause = self.router.problem
        self.lane_of: dict[str, int] = {r.route: r.index for r in self.routes if r.route != "auto"}
        self._cv = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        # A fixed concurrency starts all its threads; adaptive starts one per lane and adds more
        # as its limits grow.
        self._senders = SenderPool(self._sender_loop, initial=config.senders or len(self.routes),
                                   maximum=config.senders or min(64, config.max_in_flight * len(self.routes)))
        self._flushing = 0
        self._draining = False
        self._closed = False
        self._forked_away = False
        self._inline = config.sync or config.disabled  # deliver on the caller's thread in flush()/close()
        self._batch_bytes = config.batch_bytes
        self._min_bytes = max(1, int(config.batch_bytes * 0.9))
        self._linger = config.flush_interval
        self._wait_timeout = config.flush_interval / len(self.routes)
        self._copied: set[int] = set()  # id() of in-flight batches spooled at close (their thread was stuck)
        self._overflow_lock = threading.Lock()  # one drain at a time keeps overflow records in order
        self._evictions_seen = 0
        self._evictions_next = 0.0
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
        for route in self.routes:
            if route.region == region or route.route == region:
                return route.index
        # Written before an "auto" route was resolved: the workspace's default region is lane 0.
        return 0 if region == "auto" else None

    def finished(self, targets: Sequence[int]) -> bool:
        """Every operation below ``targets[lane]`` (push ordinals) is finished: delivered, failed or spooled."""
        with self._cv:
            return self._done(targets)

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
        routes = self.routes
        count = len(routes)
        turn = number
        policy = self.config.overflow_policy
        watch = policy == "spool" or policy == "drop_oldest"
        senders = self._senders
        try:
            while not self._stop.is_set():
                if watch:
                    self.watch_overflow()
                served = False
                force = self._flushing > 0 or self._draining
                for k in range(count):
                    route = routes[(turn + k) % count]
                    slots = route.concurrency
                    if not slots.try_acquire():
                        continue  # this lane already has as many batches in flight as its limit
                    batch = self._take(route, force)
                    if batch is None:
                        slots.release()
                        continue
                    senders.busy += 1
                    try:
                        if route.lane.queued_bytes() >= self._min_bytes and not self._stop.is_set():
                            senders.grow(slots)
                        self._run_job(route, Job(batch), None)
                    finally:
                        senders.busy -= 1
                        slots.release()
                    served = True
                turn += 1
                if served:
                    continue
                if self._draining and self.idle():
                    return
                route = routes[turn % count]
                timeout = self._wait_timeout
                if len(route.lane):
                    timeout = min(timeout, max(0.001, route.last_take + self._linger - _monotonic()))
                route.lane.wait(self._min_bytes, timeout)
        except Exception:  # a bug must not go unnoticed, but it must not take the process down either
            log.exception("ciotrack: sender thread %d crashed; flush()/close() deliver inline from now on", number)
            self._inline = True

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

    def _run_job(self, route: Route, job: Job, deadline: float | None) -> bool:
        """Deliver ``job`` and act on each piece's verdict. False when parked at ``deadline``."""
        delivery = self.router.delivery(route)
        finished = True
        for result in delivery.deliver(job, deadline):
            verdict = result.verdict
            batch = cast(Batch, result.job.batch)  # the jobs we hand to deliver() hold native batches
            attempts = result.job.attempts
            if verdict is Verdict.DELIVERED:
                failed: list[int] = []
                if result.failures:
                    ops = batch.ops()
                    by_reason: dict[str, list[bytes]] = {}
                    for i, why in result.failures:
                        by_reason.setdefault(why, []).append(ops[i])
                        failed.append(i)
                    for why, rejected in by_reason.items():
                        self.losses.fail(Reason.REJECTED, rejected, status=result.status, detail=why,
                                         attempts=attempts + 1, region=route.name)
                # Reported before finished: a flush() that returns True has seen on_error run.
                self._finish(route, batch, failed)
            elif verdict is Verdict.FAILED:
                self._fail(route, batch, Reason.REJECTED, result.status, result.reason, attempts + 1)
            elif verdict is Verdict.EXHAUSTED:
                reason = Reason.UNREACHABLE if result.reason == DESTINATION_DOWN else Reason.RETRIES_EXHAUSTED
                self._give_up(route, batch, reason, result.status, result.reason, attempts)
            elif verdict is Verdict.DEADLINE:
                route.parked.append(result.job)
                finished = False
            else:  # STOPPED: the pipeline is closing and this piece is not delivered
                self._give_up(route, batch, Reason.SHUTDOWN, None, _SHUTDOWN, attempts)
        return finished

    def _split(self, route: Route, parent: Deliverable, first: Deliverable, second: Deliverable) -> None:
        with self._cv:
            in_flight = route.in_flight
            in_flight.pop(id(parent), None)
            in_flight[id(first)] = cast(Batch, first)
            in_flight[id(second)] = cast(Batch, second)

    def _finish(self, route: Route, batch: Batch, failed: Sequence[int]) -> None:
        self.core.ack(batch, failed)
        with self._cv:
            route.in_flight.pop(id(batch), None)
            self._cv.notify_all()

    def _fail(self, route: Route, batch: Batch, reason: Reason, status: int | None, detail: str,
              attempts: int) -> None:
        self.losses.fail(reason, batch.ops(), status=status, detail=detail, attempts=attempts, region=route.name)
        self._finish(route, batch, range(batch.count))

    def _give_up(self, route: Route, batch: Batch, reason: Reason, status: int | None, detail: str,
                 attempts: int) -> None:
        """No more attempts for ``batch`` (retries exhausted, destination down, stopping): spool it, or
        report it failed."""
        if id(batch) in self._copied or self._to_spool(route, batch.ops()):
            # Handed over, not lost (the spool replays it later); counted as spooled, not delivered.
            self._finish(route, batch, range(batch.count))
            return
        self._fail(route, batch, reason, status, detail, attempts)

    def _to_spool(self, route: Route, ops: list[bytes]) -> bool:
        spool = self.spool
        if spool is None or not ops:
            return False
        try:
            spool.append(ops, region=route.name)
        except Exception:
            self.losses.log.warning("spool", "ciotrack: spooling %d operation(s) failed", len(ops), exc_info=True)
            return False
        self.core.incr("spooled", len(ops))
        return True

    # -- overflow policies: the sender-side half --------------------------------------------------

    def watch_overflow(self, force: bool = False) -> None:
        """Between batches (and at flush/close): ``spool`` hands what full lanes refused to the spool;
        ``drop_oldest`` reports the core's evictions (counted on the caller's thread, where calling
        ``on_drop`` would slow the hot path) to the ledger. ``drop_newest``/``block`` report their drops
        on the caller's thread (``Tracker._refused``)."""
        policy = self.config.overflow_policy
        if policy == "spool":
            self.drain_overflow()
        elif policy == "drop_oldest":
            self._report_evictions(force)

    def drain_overflow(self) -> None:
        """Under ``on_full="spool"``: hand operations refused by a full lane to the spool (per lane, so
        each goes under its own region)."""
        with self._overflow_lock:
            for route in self.routes:
                ops = self.core.take_overflow(route.index)
                if ops and not self._to_spool(route, ops):
                    self.losses.drop(Reason.QUEUE_FULL, len(ops), detail="no spool took them")

    def _report_evictions(self, force: bool) -> None:
        now = _monotonic()
        if not force and now < self._evictions_next:
            return
        if not self._overflow_lock.acquire(blocking=force):
            return
        try:
            self._evictions_next = now + 0.2
            count = int(self.core.stats()["counters"].get(Reason.EVICTED_OLDEST.counter, 0))
            new, self._evictions_seen = count - self._evictions_seen, count
        finally:
            self._overflow_lock.release()
        if new > 0:
            self.losses.drop(Reason.EVICTED_OLDEST, new, counted=True)

    # -- flush / close ----------------------------------------------------------------------------

    def _targets(self) -> list[int]:
        return [route.lane.pushed() for route in self.routes]

    def _done(self, targets: Sequence[int]) -> bool:
        # Called with self._cv held.
        for route, target in zip(self.routes, targets, strict=False):
            if route.lane.taken() < target:
                return False
            for batch in route.in_flight.values():
                if batch.start < target:
                    return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """True once every operation accepted before the call is delivered or finally failed."""
        deadline = None if timeout is None else _monotonic() + max(0.0, timeout)
        targets = self._targets()
        if self.config.disabled:
            for route in self.routes:
                route.lane.clear()
            return True
        self.watch_overflow(True)
        if self._inline or not self._senders.alive():
            if self.replay is not None:  # spooled ops first, as far as the deadline allows
                return self.replay.flush_inline(self._flush_inline, deadline)
            return self._flush_inline(targets, deadline)
        if threading.current_thread() in self._senders:
            # Called from a hook on a sender thread: waiting would wait for this very thread.
            deadline = _monotonic()
        with self._cv:
            self._flushing += 1
        try:
            self.core.wake()
            return self._wait_done(targets, deadline, rewake=True)
        finally:
            with self._cv:
                self._flushing -= 1

    def _flush_inline(self, targets: list[int] | None, deadline: float | None) -> bool:
        targets = self._targets() if targets is None else targets
        self._deliver_inline(targets, deadline)
        return self._wait_done(targets, deadline)

    def _wait_done(self, targets: list[int], deadline: float | None, rewake: bool = False) -> bool:
        with self._cv:
            while not self._done(targets):
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
                    self.core.wake()
            return True

    def _deliver_inline(self, targets: list[int], deadline: float | None) -> None:
        for route, target in zip(self.routes, targets, strict=False):
            while route.parked:
                if deadline is not None and _monotonic() >= deadline:
                    return
                if not self._run_job(route, route.parked.pop(0), deadline):
                    return
            while route.lane.taken() < target:
                if deadline is not None and _monotonic() >= deadline:
                    return
                batch = self._take(route, True)
                if batch is None:
                    break
                if not self._run_job(route, Job(batch), deadline):
                    return

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (None: until every batch is delivered or has finally failed), then
        stop the senders and close the destinations. Idempotent. What could not be delivered is spooled
        or reported (``on_drop("shutdown")`` for never-sent operations, ``on_error`` for started batches)."""
        with self._cv:
            if self._closed or self._forked_away:
                return True
            self._closed = True
        deadline = None if timeout is None else _monotonic() + max(0.0, timeout)
        if self.replay is not None:
            self.replay.stop_replay()
            # Keep part of the budget for spooling what delivery cannot finish; with the API known to
            # be down, waiting is pointless: spool at once.
            if self.health is not None and self.health.down:
                timeout = 0.0
            elif timeout is not None:
                timeout -= min(0.5, 0.2 * timeout)
        flushed = self.flush(timeout)
        self._stop.set()
        self.core.close()
        self.router.close_limiters()
        current = threading.current_thread()
        for thread in self._senders.threads:
            if thread is not current:
                remaining = 1.0 if deadline is None else max(0.05, deadline - _monotonic())
                thread.join(remaining)
                if thread.is_alive():
                    log.warning("ciotrack: %s still busy in a request at close(); left to finish on its own",
                                thread.name)
        for route in self.routes:
            while route.parked:
                job = route.parked.pop(0)
                self._give_up(route, cast(Batch, job.batch), Reason.SHUTDOWN, None, _SHUTDOWN, job.attempts)
        self._spool_stuck()
        for route in self.routes:
            leftover = route.lane.drain_ops()
            if leftover and not self._to_spool(route, leftover) and not self.config.disabled:
                self.losses.drop(Reason.SHUTDOWN, len(leftover))
        self.watch_overflow(True)
        if self.replay is not None:
            self.replay.close()
        self.router.close()
        return flushed

    def _spool_stuck(self) -> None:
        """After ``close()`` joined the senders: a batch still in flight belongs to a thread stuck in a
        request past the deadline. Spool a copy (should that request succeed after all, the replay only
        repeats event ids, which Customer.io deduplicates) and remember it, so that thread's own
        give-up does not report it failed."""
        if self.spool is None or threading.current_thread() in self._senders:
            return  # close() from a hook: the batch in flight is this very thread's, being finished
        for route in self.routes:
            with self._cv:
                stuck = list(route.in_flight.values())
            for batch in stuck:
                if id(batch) not in self._copied and self._to_spool(route, batch.ops()):
                    self._copied.add(id(batch))

    @property
    def closed(self) -> bool:
        return self._closed

    def release(self) -> None:
        """The Tracker was garbage-collected: senders deliver what is queued, then exit on their own."""
        if self._closed or self._forked_away:
            return
        if not self._senders.threads or self._inline:
            pending = sum(len(r.lane) for r in self.routes)
            if pending and not self.config.disabled:
                self.losses.drop(Reason.RELEASED, pending)
            self._closed = True
            return
        self._draining = True
        self.core.wake()

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
        in_flight = sum(len(route.in_flight) for route in self.routes)
        return Stats.from_core(self.core.stats(), lane_regions=[r.name for r in self.routes],
                               in_flight=in_flight, bucket_tokens=self.router.tokens(),
                               concurrency=self.router.concurrency(), metrics_enabled=self.config.metrics)

