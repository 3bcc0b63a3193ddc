"""The run: generator threads (one per scenario) call the tracker on schedule; the calling thread
samples the tracker and the target every 20 ms and closes one interval per second.

How ``delivery_duration`` is measured (no coordinated omission): one call in ``sample_every`` is
sampled with its **due** time (from the schedule, not the time it actually ran) and the tracker's
``accepted`` counter right after it (its ordinal). The tracker's queue is FIFO, so the call is
acknowledged once the tracker's count of finished operations (delivered + finally failed + spooled
+ evicted after acceptance) reaches that ordinal; the sampler sees that at its next poll and records
``poll time - due time``. Limits of the method: (1) resolution is the poll interval (20 ms: each
sample is at most that late); (2) with several senders a later batch can be acknowledged before an
earlier one, so a sample can be resolved up to one batch round trip early; (3) a call whose operation
finally failed counts as finished (the ``errors`` and ``lost`` metrics report those). A generator
that falls behind still has its samples timed from the due time, and the calls it skipped are
counted as ``dropped_iterations``.

``request_duration`` is timed per HTTP request by a response hook on the tracker's pooled
``requests`` Session (``Response.elapsed``: request sent -> response headers parsed).

With a fleet (a :class:`FleetProbe`, see :mod:`ciotrack.loadtest.fleet`) the tracker only writes to a
Redis stream: the finished count a sample waits for is the receiver's count of delivered operations,
requests, 429s, retries, failures and ``request_duration`` (at bucket resolution) are the workers',
and the backlog is the stream's lag + pending (entries).
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ciotrack.lifecycle import block_exit_signals
from ciotrack.loadtest.fleet import FleetProbe, Outcomes
from ciotrack.loadtest.histogram import LatencyHistogram, summarize
from ciotrack.loadtest.scenario import CallLoop, Scenario
from ciotrack.loadtest.stages import Scheduler
from ciotrack.loadtest.thresholds import Threshold, evaluate

__all__ = ["Display", "Driver", "RunResult"]

log = logging.getLogger("ciotrack.loadtest")

POLL_SECONDS = 0.02
_TREND_METRICS = ("enqueue_duration", "delivery_duration", "request_duration", "schedule_lateness")
# Core counters of operations that left the queue without a delivery, after being accepted.
_FINISHED_DROPS = ("dropped_oldest", "dropped_shutdown", "dropped_released", "dropped_spool_evicted")


class Display(Protocol):
    def interval(self, record: Mapping[str, Any], progress: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunResult:
    intervals: list[dict[str, Any]]
    totals: dict[str, Any]
    thresholds: list[dict[str, Any]]
    histograms: dict[str, str]
    aborted_by: str | None = None
    interrupted: bool = False
    delivery_sampling: dict[str, Any] = field(default_factory=dict)


def _finished(counters: Mapping[str, int]) -> int:
    return (int(counters.get("delivered", 0)) + int(counters.get("failed", 0)) + int(counters.get("spooled", 0))
            + sum(int(counters.get(name, 0)) for name in _FINISHED_DROPS))


def _non_2xx(requests: Mapping[str, int]) -> int:
    return sum(n for status, n in requests.items() if not status.startswith("2"))


class Driver:
    """One load run against one tracker. ``target_stats`` (optional) returns the receiver's own
    counters (the emulator's ``stats()``) once per interval."""

    def __init__(
        self,
        tracker: Any,
        scenarios: list[Scenario],
        thresholds: list[Threshold],
        display: Display,
        *,
        target_stats: Callable[[], Mapping[str, Any]] | None = None,
        max_lateness: float = 1.0,
        drain_timeout: float = 60.0,
        samples_per_second: float = 1000.0,
        measure_delivery: bool = True,
        fleet: FleetProbe | None = None,
    ) -> None:
        self.tracker = tracker
        self.scenarios = scenarios
        self.thresholds = thresholds
        self.display = display
        self.target_stats = target_stats
        self.max_lateness = max_lateness
        self.drain_timeout = drain_timeout
        self.measure_delivery = measure_delivery
        self.fleet = fleet
        self._core = getattr(tracker, "_core", None)  # 2 µs counter snapshot (stats() costs 40 µs)
        self._request_ms: deque[tuple[float, int]] = deque()
        self.loops: list[CallLoop] = []
        self.schedulers: list[Scheduler] = []
        for n, scenario in enumerate(scenarios):
            schedule = scenario.schedule()
            every = max(1, int(schedule.peak_rate / max(1.0, samples_per_second / len(scenarios))))
            loop = CallLoop(scenario, tracker, schedule, sample_every=every, accepted_count=self._accepted, seed=n + 1)
            self.loops.append(loop)
            self.schedulers.append(Scheduler(schedule, loop.issue, max_lateness=max_lateness))
        self.duration = max(s.schedule.duration for s in self.schedulers)
        if fleet is None:
            self._install_request_hook()

    # -- tracker probes ------------------------------------------------------------------------

    def _counters(self) -> Mapping[str, int]:
        if self._core is not None:
            counters: Mapping[str, int] = self._core.stats()["counters"]
            return counters
        return self.tracker.stats().counters  # type: ignore[no-any-return]

    def _accepted(self) -> int:
        return int(self._counters().get("accepted", 0))

    def _install_request_hook(self) -> None:
        # The pipeline's pooled Session is private; the hook only reads each response's elapsed
        # time and status, on the sender thread, and costs nothing measurable at <= 1000 requests/s.
        pipeline = getattr(self.tracker, "_pipeline", None)
        session = getattr(getattr(pipeline, "router", None), "session", None) or getattr(pipeline, "session", None)
        if session is None:
            log.warning("ciotrack loadtest: no requests Session found on the tracker; request_duration stays empty")
            return
        record = self._request_ms.append

        def on_response(response: Any, *args: Any, **kwargs: Any) -> Any:
            record((response.elapsed.total_seconds() * 1000.0, response.status_code))
            return response

        session.hooks["response"].append(on_response)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        origin = time.monotonic() + 0.05
        state = _RunState(self, origin)  # its first snapshot comes before the warm-up calls
        for loop in self.loops:
            state.warm_up_calls += loop.warm_up()
            loop.origin = origin
        threads = [threading.Thread(target=_scheduler_thread, args=(s, origin), name=f"ciotrack-loadtest-{sc.name}",
                                    daemon=True) for s, sc in zip(self.schedulers, self.scenarios, strict=False)]
        for thread in threads:
            thread.start()
        try:
            state.loop(threads)
        except KeyboardInterrupt:
            state.interrupted = True
            for scheduler in self.schedulers:
                scheduler.stop()
        for thread in threads:
            thread.join(5.0)
        return state.finish()


class _RunState:
    """Everything the sampler accumulates; split from Driver to keep the run loop readable."""

    def __init__(self, driver: Driver, origin: float) -> None:
        self.d = driver
        self.origin = origin
        self.pending: list[tuple[int, float]] = []  # heap of (ordinal, due time)
        self.interval_h = _histograms()
        self.total_h = _histograms()
        self.intervals: list[dict[str, Any]] = []
        self.interrupted = False
        self.aborted_by: str | None = None
        self.samples_taken = 0
        self.warm_up_calls = 0
        self.samples_resolved = 0
        self.interval_statuses: Counter[str] = Counter()
        stats = driver.tracker.stats()
        self.prev_stats = stats
        self.first_stats = stats
        self.prev_out = self.first_out = self.outcomes(stats)
        self.prev_issued = 0
        self.prev_dropped = 0
        self.prev_cpu = time.process_time()
        self.prev_wall = time.monotonic()
        self.cpu_start = self.prev_cpu
        self.prev_target: Mapping[str, Any] | None = self._target_stats()
        self.first_target = self.prev_target
        self.load_ended_at: float | None = None
        self.drained_at: float | None = None
        self.backlog_peak = 0

    def outcomes(self, stats: Any) -> Outcomes:
        fleet = self.d.fleet
        if fleet is None:
            return Outcomes(stats.delivered, stats.failed_total, dict(stats.requests), stats.retried)
        out = fleet.outcomes()
        # The tracker's own final failures (writing to Redis) are failures too.
        return Outcomes(out.delivered, out.failed + stats.failed_total, out.requests, out.retried)

    def _target_stats(self) -> Mapping[str, Any] | None:
        if self.d.target_stats is None:
            return None
        try:
            return self.d.target_stats()
        except Exception as err:  # a receiver that is down must not end the run
            log.debug("target stats unavailable: %s", err)
            return None

    def poll(self) -> None:
        d = self.d
        now = time.monotonic()
        for loop in d.loops:
            samples = loop.samples
            while samples:
                due, enqueue_ns, ordinal = samples.popleft()
                self.samples_taken += 1
                self.interval_h["enqueue_duration"].record_ms(enqueue_ns / 1e6)
                if ordinal is not None and d.measure_delivery:
                    heapq.heappush(self.pending, (ordinal, due))
        while d._request_ms:
            ms, status = d._request_ms.popleft()
            self.interval_h["request_duration"].record_ms(ms)
        if self.pending:
            finished = d.fleet.delivered_ops() if d.fleet is not None else _finished(d._counters())
            while self.pending and self.pending[0][0] <= finished:
                _, due = heapq.heappop(self.pending)
                self.interval_h["delivery_duration"].record_ms((now - due) * 1000.0)
                self.samples_resolved += 1
        for scheduler in d.schedulers:
            lateness = scheduler.lateness_max
            if lateness > 0:
                self.interval_h["schedule_lateness"].record_ms(lateness * 1000.0)
                scheduler.lateness_max = 0.0

    def loop(self, threads: list[threading.Thread]) -> None:
        d = self.d
        next_boundary = self.origin + 1.0
        while True:
            time.sleep(POLL_SECONDS)
            self.poll()
            now = time.monotonic()
            if now < next_boundary:
                continue
            record = self.close_interval(next_boundary)
            next_boundary += 1.0
            loading = any(t.is_alive() for t in threads)
            if not loading and self.load_ended_at is None:
                self.load_ended_at = record["t"]
            progress = {"elapsed": record["t"], "duration": d.duration, "phase": "load" if loading else "drain",
                        # The interval's worst, as the report has it (the latest burst's alone would
                        # hide a late burst earlier in the second).
                        "lateness_ms": record["lateness_max_ms"]}
            d.display.interval(record, progress)
            if self.check_abort(record["t"]):
                for scheduler in d.schedulers:
                    scheduler.stop()
                return
            if not loading:
                if not d.measure_delivery:
                    return  # nothing is sent: there is no backlog to wait for
                if d.fleet is not None:
                    drained = record["backlog"] == 0 and record["producer_backlog"] == 0
                else:
                    drained = record["backlog"] == 0 and not self.pending
                if drained:
                    self.drained_at = record["t"]
                    return
                if self.load_ended_at is not None and record["t"] - self.load_ended_at >= d.drain_timeout:
                    return

    def close_interval(self, boundary: float) -> dict[str, Any]:
        d = self.d
        t = round(boundary - self.origin, 3)
        stats = d.tracker.stats()
        issued = sum(s.issued for s in d.schedulers)
        dropped = sum(s.dropped for s in d.schedulers)
        target_rate = sum(s.schedule.due_by(t) - s.schedule.due_by(t - 1.0) for s in d.schedulers)
        wall = time.monotonic()
        cpu = time.process_time()
        out, prev_out = self.outcomes(stats), self.prev_out
        requests = {k: v - prev_out.requests.get(k, 0) for k, v in out.requests.items()
                    if v - prev_out.requests.get(k, 0)}
        backlog = max(0, stats.accepted - _finished(stats.counters))
        stream: dict[str, int] = {}
        if d.fleet is not None:
            # Read after the tracker's counters: once these say all is in Redis, the stream says the rest.
            lag, pending = d.fleet.stream_backlog()
            for ms, count in d.fleet.new_request_latencies():
                self.interval_h["request_duration"].record_ms(ms, count)
            stream = {"producer_backlog": backlog, "stream_lag": lag, "stream_pending": pending}
            backlog = lag + pending
        self.backlog_peak = max(self.backlog_peak, backlog)
        h = self.interval_h
        delivery = summarize(h["delivery_duration"], (50.0, 95.0, 99.0))
        record: dict[str, Any] = {
            "t": t,
            "target_rate": round(target_rate, 1),
            "achieved_rate": issued - self.prev_issued,
            "dropped_iterations": dropped - self.prev_dropped,
            "lateness_max_ms": h["schedule_lateness"].aggregate_ms("max") or 0.0,
            "enqueue_p50_us": _us(h["enqueue_duration"].percentile_ms(50.0)),
            "enqueue_p99_us": _us(h["enqueue_duration"].percentile_ms(99.0)),
            "delivery_p50": delivery["p50"],
            "delivery_p95": delivery["p95"],
            "delivery_p99": delivery["p99"],
            "delivery_samples": delivery["count"],
            "request_p50": h["request_duration"].percentile_ms(50.0),
            "request_p95": h["request_duration"].percentile_ms(95.0),
            "delivered_rate": out.delivered - prev_out.delivered,
            "requests": requests,
            "http_429": requests.get("429", 0),
            "retries": out.retried - prev_out.retried,
            "failed": out.failed - prev_out.failed,
            "backlog": backlog,
            **stream,
            "queued_ops": sum(stats.queued_ops.values()),
            "in_flight_batches": stats.in_flight,
            # The adaptive concurrency limit, summed over regions (None before the tracker had one).
            "concurrency_limit": (sum(stats.concurrency_limit.values())
                                  if getattr(stats, "concurrency_limit", None) else None),
            "cpu_percent": round(100.0 * (cpu - self.prev_cpu) / max(1e-9, wall - self.prev_wall), 1),
        }
        target = self._target_stats()
        if target is not None and self.prev_target is not None:
            record["receiver"] = {
                "operations": int(target.get("operations", 0)) - int(self.prev_target.get("operations", 0)),
                "rate_limited": int(target.get("faults", {}).get("rate_limited", 0))
                - int(self.prev_target.get("faults", {}).get("rate_limited", 0)),
            }
        if target is not None:
            self.prev_target = target
        for name, hist in h.items():
            self.total_h[name].add(hist)
        self.interval_h = _histograms()
        self.prev_stats, self.prev_out, self.prev_issued, self.prev_dropped = stats, out, issued, dropped
        self.prev_cpu, self.prev_wall = cpu, wall
        self.intervals.append(record)
        return record

    # -- metrics lookup for thresholds ---------------------------------------------------------

    def lookup(self, metric: str, aggregation: str, percentile: float | None,
               totals: Mapping[str, Any] | None = None) -> float | None:
        if metric in _TREND_METRICS:
            return self.total_h[metric].aggregate_ms(aggregation, percentile)
        elapsed = max(1e-9, self.intervals[-1]["t"] if self.intervals else 1e-9)
        stats, first = self.prev_stats, self.first_stats
        out, first_out = self.prev_out, self.first_out
        calls = sum(s.issued for s in self.d.schedulers)
        if metric == "errors":
            failed = (out.failed - first_out.failed) + (stats.dropped_total - first.dropped_total)
            if totals is not None and totals["lost"] is not None:  # None: nothing was sent (--no-send)
                failed = max(failed, int(totals["lost"]))
            return failed / calls if calls else None
        if metric == "lost" and totals is not None and totals["lost"] is None:
            return None  # not measured: the threshold has no value (and fails)
        if metric == "http_req_failed":
            reqs = sum(out.requests.values()) - sum(first_out.requests.values())
            bad = _non_2xx(out.requests) - _non_2xx(first_out.requests)
            return bad / reqs if reqs else None
        counts: dict[str, float] = {
            "http_429": out.requests.get("429", 0) - first_out.requests.get("429", 0),
            "retries": out.retried - first_out.retried,
            "dropped_iterations": sum(s.dropped for s in self.d.schedulers),
            "lost": float(totals["lost"] or 0) if totals is not None else 0.0,
            "calls": calls,
            "delivered": out.delivered - first_out.delivered,
        }
        if metric in counts:
            count = counts[metric]
            return count if aggregation == "count" else count / elapsed
        series = {"backlog": "backlog", "achieved_rate": "achieved_rate", "cpu": "cpu_percent"}[metric]
        values = [float(r[series]) for r in self.intervals]
        if not values:
            return None
        return values[-1] if aggregation == "value" else (max(values) if aggregation == "max" else min(values))

    def check_abort(self, elapsed: float) -> bool:
        for threshold in self.d.thresholds:
            if not threshold.abort_on_fail or elapsed < threshold.delay_abort_eval:
                continue
            value = self.lookup(threshold.metric, threshold.aggregation, threshold.percentile)
            if value is not None and not threshold.check(value):
                self.aborted_by = threshold.source
                return True
        return False

    def finish(self) -> RunResult:
        d = self.d
        tracker = d.tracker
        tracker.close(timeout=5.0)
        self.poll()
        # What that last poll recorded (samples taken or resolved since the last interval closed:
        # the end of an interrupted run, what close() delivered after the drain) belongs in the totals.
        for name, hist in self.interval_h.items():
            self.total_h[name].add(hist)
        self.interval_h = _histograms()
        if d.fleet is not None:  # requests since the last interval closed
            for ms, count in d.fleet.new_request_latencies():
                self.total_h["request_duration"].record_ms(ms, count)
        stats = tracker.stats()
        out, first_out = self.outcomes(stats), self.first_out
        self.prev_stats, self.prev_out = stats, out
        first = self.first_stats
        target = self._target_stats()
        calls = sum(s.issued for s in d.schedulers)
        accepted = stats.accepted - first.accepted
        delivered = out.delivered - first_out.delivered
        dropped_full = int(stats.dropped.get("queue_full", 0)) - int(first.dropped.get("queue_full", 0))
        lost = max(0, accepted + dropped_full - delivered) if d.measure_delivery else None
        elapsed = self.intervals[-1]["t"] if self.intervals else 0.0
        load_seconds = self.load_ended_at if self.load_ended_at is not None else elapsed
        # From time 0 to the generator's last call, or to its stop (a signal, an abort): later than
        # the schedule's end when it lagged. A generator thread still running has not finished yet.
        ends = [s.finished_at if not math.isnan(s.finished_at) else time.monotonic() for s in d.schedulers]
        generator_seconds = round(max(ends, default=self.origin) - self.origin, 3)
        totals: dict[str, Any] = {
            "duration_s": elapsed,
            "load_duration_s": load_seconds,
            "calls": calls,
            "warm_up_calls": self.warm_up_calls,
            "target_calls": round(sum(s.schedule.total for s in d.schedulers), 1),
            "dropped_iterations": sum(s.dropped for s in d.schedulers),
            "achieved_rate": round(calls / generator_seconds, 1) if generator_seconds > 0 else 0.0,
            "generator_seconds": generator_seconds,
            "schedule_seconds": d.duration,
            "accepted": accepted,
            "deduplicated": stats.deduplicated_total - first.deduplicated_total,
            "invalid": stats.invalid - first.invalid,
            "delivered": delivered,
            "delivered_rate": round(delivered / elapsed, 1) if elapsed else 0.0,
            "failed": out.failed - first_out.failed,
            "dropped": {k: v - first.dropped.get(k, 0) for k, v in stats.dropped.items()
                        if v - first.dropped.get(k, 0)},
            "lost": lost,
            "http_429": out.requests.get("429", 0) - first_out.requests.get("429", 0),
            "retries": out.retried - first_out.retried,
            "requests": {k: v - first_out.requests.get(k, 0) for k, v in out.requests.items()
                         if v - first_out.requests.get(k, 0)},
            "backlog_peak": self.backlog_peak,
            "drain_s": (round(self.drained_at - self.load_ended_at, 1)
                        if self.drained_at is not None and self.load_ended_at is not None else None),
            "batch_ops_p50": stats.batch_size.p50 or None,
            "cpu_seconds": round(time.process_time() - self.cpu_start, 2),
            "lateness_max_ms": self.total_h["schedule_lateness"].aggregate_ms("max") or 0.0,
        }
        if d.fleet is not None:
            totals["written_to_redis"] = stats.delivered - first.delivered  # XADD acknowledged (durable)
        for name in _TREND_METRICS:
            totals[name] = summarize(self.total_h[name])
        if target is not None and self.first_target is not None:
            totals["receiver"] = {
                "operations": int(target.get("operations", 0)) - int(self.first_target.get("operations", 0)),
                "duplicates": int(target.get("duplicates", 0)) - int(self.first_target.get("duplicates", 0)),
                "rate_limited": int(target.get("faults", {}).get("rate_limited", 0))
                - int(self.first_target.get("faults", {}).get("rate_limited", 0)),
                "by_status": target.get("by_status", {}),
            }
        results = []
        for threshold, ok, value in evaluate(d.thresholds, lambda m, a, p: self.lookup(m, a, p, totals)):
            results.append({"metric": threshold.metric, "expr": threshold.expr, "ok": ok,
                            "value": None if value is None else round(float(value), 6),
                            "abort_on_fail": threshold.abort_on_fail, "source": threshold.source})
        counted = "the receiver's delivered-operation" if d.fleet is not None else "the tracker's finished"
        sampling = {
            "method": f"1 call in N timed from its due time; acknowledged when {counted} "
                      f"count reaches its accepted ordinal (polled every {POLL_SECONDS * 1000:.0f} ms)",
            "sample_every": [loop.sample_every for loop in d.loops],
            "samples": self.samples_taken,
            "resolved": self.samples_resolved,
            "unresolved": len(self.pending),
        }
        return RunResult(intervals=self.intervals, totals=totals, thresholds=results,
                         histograms={name: self.total_h[name].encode() for name in _TREND_METRICS},
                         aborted_by=self.aborted_by, interrupted=self.interrupted, delivery_sampling=sampling)


def _histograms() -> dict[str, LatencyHistogram]:
    # The enqueue cost is a few µs: nanosecond resolution for it, microseconds for the rest.
    return {m: LatencyHistogram(1e6 if m == "enqueue_duration" else 1000.0) for m in _TREND_METRICS}


def _us(ms: float | None) -> float | None:
    return None if ms is None else round(ms * 1000.0, 2)


def _scheduler_thread(scheduler: Scheduler, started_at: float) -> None:
    block_exit_signals()  # Ctrl-C and SIGTERM must reach the main thread, which ends the run (lifecycle.py)
    scheduler.run(started_at=started_at)
