"""The delivery pipeline behind a Tracker: native core, sender threads, flush/close accounting.

Shape (after OpenTelemetry's BatchProcessor and Sentry's worker): producers push encoded operations into
the core's lanes (one per region) on their own threads; N sender threads loop
``wait -> next_batch -> token -> destination.send -> ack | retry | split | fail``. Every sleep is
an ``Event``/native wait that ``close()`` cuts.

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
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ciotrack._core import Batch, Bucket, Core, Lane
from ciotrack.config import Config
from ciotrack.errors import DeliveryError
from ciotrack.lifecycle import block_exit_signals
from ciotrack.retry import RetryPolicy
from ciotrack.overflow import overflow_watcher
from ciotrack.spooling import SpoolBridge
from ciotrack.stats import Stats
from ciotrack.transport import Destination, TrackV2Destination, lookup_region, make_session

__all__ = ["Pipeline", "SpoolHook"]

log = logging.getLogger("ciotrack.sender")
_monotonic = time.monotonic


class SpoolHook(Protocol):
    """Where operations go when they cannot be delivered now (the disk spool plugs in here)."""

    def append(self, ops: Sequence[bytes], *, region: str = "us") -> None: ...


class ThrottledLog:
    """Logs a warning at most once per ``interval`` seconds per key, counting what it suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = _monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-1e18, 0))
            if now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        self._logger.warning(message, *args, exc_info=exc_info)


class _Job:
    """One batch on its way, with its retry state (kept when a sync flush parks it at its deadline)."""

    __slots__ = ("batch", "attempts", "first_attempt")

    def __init__(self, batch: Batch, attempts: int = 0, first_attempt: float | None = None) -> None:
        self.batch = batch
        self.attempts = attempts
        self.first_attempt = first_attempt


class _Route:
    """A lane of the core plus where its batches go. ``route`` is ``us``, ``eu`` or ``auto``."""

    __slots__ = ("index", "route", "region", "lane", "destination", "bucket", "in_flight", "parked", "last_take")

    def __init__(self, index: int, route: str, lane: Lane) -> None:
        self.index = index
        self.route = route
        self.region: str | None = None if route == "auto" else route
        self.lane = lane
        self.destination: Destination | None = None
        self.bucket: Bucket | None = None
        self.in_flight: dict[int, Batch] = {}  # id(batch) -> batch: taken, not finished (sent, retried or split)
        self.parked: list[_Job] = []
        self.last_take = -1e18


# Outcomes of one job attempt loop.
_DONE, _SPLIT, _PARK, _ABANDON = 0, 1, 2, 3


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
        self.routes = [_Route(i, route, self.core.lane(i)) for i, route in enumerate(routes)]
        self.lane_of: dict[str, int] = {r.route: r.index for r in self.routes if r.route != "auto"}
        self.spool: SpoolHook | None = None  # the disk spool plugs in here (SpoolBridge sets itself)
        self.policy = RetryPolicy(config.max_retries, config.retry_budget, config.backoff_base, config.backoff_cap,
                                  config.retry_after_cap)
        self.session = make_session(config.senders, hosts=len(routes), user_agent_suffix=config.user_agent)
        self.log = ThrottledLog(log)
        self._destinations: dict[str, Destination] = {}
        self._buckets: dict[str, Bucket] = {}
        self._cv = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._flushing = 0
        self._draining = False
        self._closed = False
        self._forked_away = False
        self._inline = config.sync or config.disabled  # deliver on the caller's thread in flush()/close()
        self._batch_bytes = config.batch_bytes
        self._min_bytes = max(1, int(config.batch_bytes * 0.9))
        self._linger = config.flush_interval
        self._wait_timeout = config.flush_interval / len(self.routes)
        for route in self.routes:
            if route.region is not None:
                self._bind(route, route.region)
        self._overflow_lock = threading.Lock()  # one drain at a time keeps overflow records in order
        self.spooling = SpoolBridge(self) if config.spool_dir is not None and not config.disabled else None
        self.watch_overflow = overflow_watcher(self)

    # -- setup -----------------------------------------------------------------------------------

    def _bind(self, route: _Route, region: str) -> None:
        route.region = region
        destination = self._destinations.get(region)
        if destination is None:
            c = self.config
            destination = TrackV2Destination(self.session, c.endpoint_for(region), c.site_id, c.api_key,
                                             timeout=c.timeout, proxies=c.proxies, verify=c.verify, name=region)
            self._destinations[region] = destination
        route.destination = destination
        if self.config.rate_limit > 0:
            bucket = self._buckets.get(region)
            if bucket is None:
                bucket = self._buckets[region] = Bucket(self.config.rate_limit, self.config.rate_burst)
            route.bucket = bucket

    def _resolve_auto(self, route: _Route) -> None:
        with self._start_lock:
            if route.destination is not None:
                return
            c = self.config
            region = lookup_region(self.session, c.endpoint_for("us"), c.site_id, c.api_key,
                                   timeout=c.timeout, proxies=c.proxies, verify=c.verify)
            if region is None:
                log.warning("ciotrack: region='auto' could not determine the account's region; sending to 'us'")
                region = "us"
            self._bind(route, region)

    def start(self) -> bool:
        """Start the sender threads (idempotent). False when they cannot start (e.g. at interpreter
        shutdown on Python 3.12+): flush()/close() then deliver on the calling thread."""
        if self._inline or self._threads:
            return True
        with self._start_lock:
            if self._threads or self._closed:
                return True
            threads = [threading.Thread(target=self._sender_loop, args=(n,), name=f"ciotrack-sender-{n}", daemon=True)
                       for n in range(self.config.senders)]
            try:
                for thread in threads:
                    thread.start()
                    self._threads.append(thread)
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                log.warning("ciotrack: cannot start sender threads (%s); delivering on the calling thread", exc)
                if not self._threads:
                    self._inline = True
                    return False
            if self.spooling is not None:
                self.spooling.start()
        return True

    # -- sender threads ---------------------------------------------------------------------------

    def _sender_loop(self, number: int) -> None:
        block_exit_signals()
        routes = self.routes
        count = len(routes)
        turn = number
        try:
            while not self._stop.is_set():
                if self.watch_overflow is not None:
                    self.watch_overflow()
                served = False
                force = self._flushing > 0 or self._draining
                for k in range(count):
                    route = routes[(turn + k) % count]
                    batch = self._take(route, force)
                    if batch is not None:
                        self._run_job(route, _Job(batch), None)
                        served = True
                turn += 1
                if served:
                    continue
                if self._draining and self._idle():
                    return
                route = routes[turn % count]
                timeout = self._wait_timeout
                if len(route.lane):
                    timeout = min(timeout, max(0.001, route.last_take + self._linger - _monotonic()))
                route.lane.wait(self._min_bytes, timeout)
        except Exception:  # a bug must not go unnoticed, but it must not take the process down either
            log.exception("ciotrack: sender thread %d crashed; flush()/close() deliver inline from now on", number)
            self._inline = True

    def _take(self, route: _Route, force: bool) -> Batch | None:
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

    def _idle(self) -> bool:
        with self._cv:
            return all(not r.in_flight and not len(r.lane) for r in self.routes)

    # -- one batch --------------------------------------------------------------------------------

    def _run_job(self, route: _Route, job: _Job, deadline: float | None) -> bool:
        """Deliver ``job`` (and the halves of any 413 split). False when parked at ``deadline``."""
        stack = [job]
        while stack:
            current = stack.pop()
            result = self._attempt(route, current, deadline)
            if result == _SPLIT:
                first, second = current.batch.split()
                with self._cv:
                    in_flight = route.in_flight
                    in_flight.pop(id(current.batch), None)
                    in_flight[id(first)] = first
                    in_flight[id(second)] = second
                self.core.incr("split")
                stack.append(_Job(second))
                stack.append(_Job(first))
            elif result == _PARK:
                route.parked.append(current)
                route.parked.extend(reversed(stack))
                return False
            elif result == _ABANDON:
                self._abandon(route, current)
                for rest in stack:
                    self._abandon(route, rest)
                return True
        return True

    def _attempt(self, route: _Route, job: _Job, deadline: float | None) -> int:
        if route.destination is None:
            self._resolve_auto(route)
        destination = route.destination
        assert destination is not None
        core = self.core
        batch = job.batch
        spooling = self.spooling
        while True:
            if spooling is not None and spooling.api_down:
                # A batch already ran out of retries and nothing got through since: spool at once (the
                # spooler's probe finds the API again), rather than hold this one for a retry budget.
                self._give_up(route, batch, None, "unreachable: Customer.io is down", job.attempts)
                return _DONE
            if not self._take_token(route, deadline):
                return _ABANDON if self._stop.is_set() else _PARK
            started = time.perf_counter()
            outcome = destination.send(batch.body)
            latency = time.perf_counter() - started
            if job.first_attempt is None:
                job.first_attempt = _monotonic()
            core.observe("request_latency_seconds", latency)
            core.incr(f"requests_{outcome.status}" if outcome.status is not None else "requests_error")
            kind = outcome.kind
            if kind == "delivered" or kind == "partial":
                if self.spooling is not None:
                    self.spooling.delivered()
                core.incr("bytes_sent", len(batch.body))
                core.observe("batch_ops", batch.count)
                core.observe("batch_bytes", len(batch.body))
                failures = [(i, why) for i, why in outcome.failures if 0 <= i < batch.count]
                if failures:
                    ops = batch.ops()
                    by_reason: dict[str, list[bytes]] = {}
                    for i, why in failures:
                        by_reason.setdefault(why, []).append(ops[i])
                    for why, rejected in by_reason.items():
                        self._report(route, rejected, outcome.status, why, job.attempts + 1)
                # Reported before finished: a flush() that returns True has seen on_error run.
                self._finish(route, batch, [i for i, _ in failures])
                return _DONE
            if kind == "split" and batch.count >= 2:
                return _SPLIT
            if kind == "final" or kind == "split":
                self._fail(route, batch, outcome.status, outcome.reason, job.attempts + 1)
                return _DONE
            job.attempts += 1
            if spooling is not None:
                spooling.failed_attempt(answered=outcome.status is not None)  # is Customer.io down?
            delay = self.policy.delay(job.attempts, outcome.retry_after)
            if outcome.status == 429 and route.bucket is not None:
                # Every sender of this region waits, not only this one: the server said "slow down".
                route.bucket.pause(delay)
            if self.policy.gives_up(job.attempts, _monotonic() - job.first_attempt, delay):
                if self.spooling is not None:
                    self.spooling.unreachable()
                self._give_up(route, batch, outcome.status, f"retries exhausted: {outcome.reason}", job.attempts)
                return _DONE
            core.incr("retried")
            if deadline is not None and _monotonic() + delay > deadline:
                return _PARK
            if self._stop.wait(delay):
                return _ABANDON

    def _take_token(self, route: _Route, deadline: float | None) -> bool:
        bucket = route.bucket
        if bucket is None:
            return not self._stop.is_set()
        while not self._stop.is_set():
            wait = 1.0 if deadline is None else min(1.0, deadline - _monotonic())
            if wait <= 0:
                return False
            if bucket.acquire(wait):
                return True
        return False

    def _finish(self, route: _Route, batch: Batch, failed: Sequence[int]) -> None:
        self.core.ack(batch, failed)
        with self._cv:
            route.in_flight.pop(id(batch), None)
            self._cv.notify_all()

    def _fail(self, route: _Route, batch: Batch, status: int | None, reason: str, attempts: int) -> None:
        self._report(route, batch.ops(), status, reason, attempts)
        self._finish(route, batch, range(batch.count))

    def _abandon(self, route: _Route, job: _Job) -> None:
        """The pipeline is stopping and ``job`` is not delivered: spool it, or report it failed."""
        self._give_up(route, job.batch, None, "shutdown: not delivered before close()/exit deadline", job.attempts)

    def _give_up(self, route: _Route, batch: Batch, status: int | None, reason: str, attempts: int) -> None:
        """No more attempts for ``batch`` (retries exhausted, or stopping): spool it, or report it failed."""
        if (self.spooling is not None and self.spooling.copied(batch)) or self._to_spool(route, batch.ops()):
            # Handed over, not lost (the spool replays it later); counted as spooled, not delivered.
            self._finish(route, batch, range(batch.count))
            return
        self._fail(route, batch, status, reason, attempts)

    def _report(self, route: _Route, ops: list[bytes], status: int | None, reason: str, attempts: int) -> None:
        region = route.region or route.route
        count = len(ops)
        self.core.incr("failed", count)
        self.core.incr("failed_" + _reason_slug(reason), count)
        self.log.warning("failed:" + region, "ciotrack: %d operation(s) to region %s failed after %d attempt(s): %s",
                         count, region, attempts, reason)
        hook = self.config.on_error
        if hook is not None:
            error = DeliveryError(f"{count} operation(s) failed: {reason}", ops=ops, status=status, reason=reason,
                                  attempts=attempts, region=region)
            self.call_hook(hook, error)

    def call_hook(self, hook: Callable[..., object], *args: object) -> None:
        try:
            hook(*args)
        except Exception:
            # The hook's name, not its repr: a functools.partial's repr would show its bound arguments.
            name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
            self.log.warning("hook", "ciotrack: hook %s raised; ignored (delivery goes on)", name, exc_info=True)

    def drop(self, reason: str, count: int) -> None:
        if count <= 0:
            return
        self.core.incr("dropped_" + reason, count)
        hook = self.config.on_drop
        if hook is not None:
            self.call_hook(hook, reason, count)

    def _to_spool(self, route: _Route, ops: list[bytes]) -> bool:
        spool = self.spool
        if spool is None or not ops:
            return False
        try:
            spool.append(ops, region=route.region or route.route)
        except Exception:
            self.log.warning("spool", "ciotrack: spooling %d operation(s) failed", len(ops), exc_info=True)
            return False
        self.core.incr("spooled", len(ops))
        return True

    def drain_overflow(self) -> None:
        """Under ``on_full="spool"``: hand operations refused by a full lane to the spool (per lane, so
        each goes under its own region)."""
        with self._overflow_lock:
            for route in self.routes:
                ops = self.core.take_overflow(route.index)
                if ops and not self._to_spool(route, ops):
                    self.log.warning("overflow", "ciotrack: queue full and no spool took %d operation(s); dropped",
                                     len(ops))
                    self.drop("queue_full", len(ops))

    # -- flush / close ----------------------------------------------------------------------------

    def _targets(self) -> list[int]:
        return [route.lane.pushed() for route in self.routes]

    def _done(self, targets: list[int]) -> bool:
        # Called with self._cv held.
        for route, target in zip(self.routes, targets):
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
        if self.watch_overflow is not None:
            self.watch_overflow(True)
        if self._inline or not any(t.is_alive() for t in self._threads):
            if self.spooling is not None:  # spooled ops first, as far as the deadline allows
                return self.spooling.flush_inline(self._flush_inline, deadline)
            return self._flush_inline(targets, deadline)
        if threading.current_thread() in self._threads:
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
        for route, target in zip(self.routes, targets):
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
                if not self._run_job(route, _Job(batch), deadline):
                    return

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (None: until every batch is delivered or has finally failed), then
        stop the senders and close the Session. Idempotent. What could not be delivered is spooled or
        reported (``on_drop("shutdown")`` for never-sent operations, ``on_error`` for started batches)."""
        with self._cv:
            if self._closed or self._forked_away:
                return True
            self._closed = True
        deadline = None if timeout is None else _monotonic() + max(0.0, timeout)
        if self.spooling is not None:
            self.spooling.stop_replay()
            # Keep part of the budget for spooling what delivery cannot finish; with the API known to
            # be down, waiting is pointless: spool at once.
            if self.spooling.api_down:
                timeout = 0.0
            elif timeout is not None:
                timeout -= min(0.5, 0.2 * timeout)
        flushed = self.flush(timeout)
        self._stop.set()
        self.core.close()
        for bucket in self._buckets.values():
            bucket.close()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                remaining = 1.0 if deadline is None else max(0.05, deadline - _monotonic())
                thread.join(remaining)
                if thread.is_alive():
                    log.warning("ciotrack: %s still busy in a request at close(); left to finish on its own",
                                thread.name)
        for route in self.routes:
            while route.parked:
                self._abandon(route, route.parked.pop(0))
        if self.spooling is not None:
            self.spooling.spool_stuck()
        for route in self.routes:
            leftover = route.lane.drain_ops()
            if leftover and not self._to_spool(route, leftover):
                if not self.config.disabled:
                    self.log.warning("shutdown", "ciotrack: %d queued operation(s) not delivered before the deadline",
                                     len(leftover))
                    self.drop("shutdown", len(leftover))
        if self.watch_overflow is not None:
            self.watch_overflow(True)
        if self.spooling is not None:
            self.spooling.close()
        self.session.close()
        return flushed

    @property
    def closed(self) -> bool:
        return self._closed

    def release(self) -> None:
        """The Tracker was garbage-collected: senders deliver what is queued, then exit on their own."""
        if self._closed or self._forked_away:
            return
        if not self._threads or self._inline:
            pending = sum(len(r.lane) for r in self.routes)
            if pending and not self.config.disabled:
                log.warning("ciotrack: tracker collected with %d undelivered operation(s) (no sender running)",
                            pending)
                self.drop("released", pending)
            self._closed = True
            return
        self._draining = True
        self.core.wake()

    def forget_after_fork(self) -> None:
        """In a forked child: this pipeline belongs to the parent (which delivers its queue). Never
        touch its locks (a parent thread may have held them at fork time) or its sockets."""
        self._forked_away = True
        self._threads = []
        if self.spooling is not None:
            self.spooling.forget_after_fork()

    def stats(self) -> Stats:
        # No lock: len() of a dict is atomic, and a gauge read a moment early is still a fair gauge
        # (also safe from a hook, or after a fork where a parent thread may hold self._cv).
        in_flight = sum(len(route.in_flight) for route in self.routes)
        tokens = {region: bucket.tokens() for region, bucket in list(self._buckets.items())}
        return Stats.from_core(self.core.stats(), lane_regions=[r.region or r.route for r in self.routes],
                               in_flight=in_flight, bucket_tokens=tokens, metrics_enabled=self.config.metrics)


def _reason_slug(reason: str) -> str:
    head = reason.split(":", 1)[0].strip().lower()
    return re.sub(r"[^a-z0-9_]+", "_", head)[:40] or "unknown"
