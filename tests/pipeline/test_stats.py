"""Tracker.stats(): the typed snapshot, checked against what the emulator saw and against timings
recorded independently around the very requests the sender made."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import threading
import time
from typing import Any

import pytest

from ciotrack import _core
from ciotrack.config import Config
from ciotrack.destinations import Outcome
from ciotrack.destinations.track_v2 import TrackV2Destination, make_session
from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError
from ciotrack.stats import HistogramSummary, Stats

from conftest import API_KEY, SITE_ID, TrackerFactory

# -- the core's log-linear buckets, restated: 8 sub-buckets per power of two, from 2**-30, each
# closed above (lower, upper] like a Prometheus le ----------------------------------------------------


def bucket_of(value: float) -> int:
    if value <= 2.0 ** -30:
        return 0
    # The float just below: an edge belongs to the bucket it closes.
    mantissa, exponent = math.frexp(math.nextafter(value, 0.0))  # 0.5 <= mantissa < 1
    sub = int((2 * mantissa - 1) * 8)
    return 1 + (exponent - 1 + 30) * 8 + sub


def upper_bound(bucket: int) -> float:
    if bucket <= 0:
        return 2.0 ** -30
    octave, sub = divmod(bucket - 1, 8)
    return 2.0 ** (octave - 30) * (1 + (sub + 1) / 8)


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def assert_within_one_bucket(reported: float, reference: float, what: str) -> None:
    """``reported`` lies in the reference's bucket or one of its two neighbours."""
    bucket = bucket_of(reference)
    low, high = upper_bound(bucket - 2), upper_bound(bucket + 1)
    assert low <= reported <= high, f"{what}: reported {reported}, reference {reference} (bucket [{low}, {high}])"


def test_bucket_restatement_matches_the_core() -> None:
    # If the core's bucket layout changes, the tolerance used below would be meaningless: pin it.
    core = _core.Core()
    values = [0.0004 * 1.37 ** k for k in range(40)]
    for value in values:
        core.observe("probe", value)
    reported = core.stats()["histograms"]["probe"]
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        exact = exact_quantile(values, q)
        assert reported[key] == min(upper_bound(bucket_of(exact)), max(values))


# -- the snapshot itself ----------------------------------------------------------------------------


def test_from_core_groups_counters_and_maps_lanes_to_regions() -> None:
    raw = {
        "counters": {"accepted": 10, "invalid": 2, "deduped_identify": 3, "deduped_event": 1, "dropped_full": 4,
                     "dropped_queue_full": 1, "dropped_oldest": 2, "dropped_closed": 5, "delivered": 6, "failed": 3,
                     "failed_http_400": 2, "failed_retries_exhausted": 1, "retried": 7, "spooled": 8, "replayed": 9,
                     "requests_200": 4, "requests_error": 2, "bytes_sent": 1234, "split": 1, "overflowed": 3},
        "gauges": {"lane0_ops": 5, "lane0_bytes": 500, "lane1_ops": 2, "lane1_bytes": 20, "lane2_ops": 1,
                   "lane2_bytes": 10, "overflow_ops": 3},
        "histograms": {"request_latency_seconds": {"count": 2, "sum": 0.3, "p50": 0.1, "p95": 0.2, "p99": 0.2,
                                                   "max": 0.2}},
    }
    stats = Stats.from_core(raw, lane_regions=["us", "eu", "us"], in_flight=2, bucket_tokens={"us": 3.5})
    assert (stats.accepted, stats.invalid, stats.delivered, stats.retried, stats.spooled, stats.replayed) == (
        10, 2, 6, 7, 8, 9)
    assert stats.deduplicated == {"identify": 3, "event": 1} and stats.deduplicated_total == 4
    # The core's dropped_full and the sender's dropped_queue_full are the same reason on_drop reports.
    assert stats.dropped == {"queue_full": 5, "evicted_oldest": 2, "closed": 5} and stats.dropped_total == 12
    assert stats.failed == {"http_400": 2, "retries_exhausted": 1} and stats.failed_total == 3
    assert stats.requests == {"200": 4, "error": 2}
    assert (stats.bytes_sent, stats.splits, stats.overflowed, stats.overflow_ops) == (1234, 1, 3, 3)
    assert stats.queued_ops == {"us": 6, "eu": 2} and stats.queued_bytes == {"us": 510, "eu": 20}
    assert stats.in_flight == 2 and stats.bucket_tokens == {"us": 3.5}
    assert stats.request_latency == HistogramSummary(count=2, sum=0.3, p50=0.1, p95=0.2, p99=0.2, max=0.2)
    assert stats.request_latency.mean == pytest.approx(0.15)
    assert stats.delivery_latency == HistogramSummary() and stats.delivery_latency.mean == 0.0
    assert stats["counters"]["accepted"] == 10 and stats["gauges"]["lane1_ops"] == 2
    with pytest.raises(KeyError):
        stats["accepted"]


def test_snapshot_is_frozen_picklable_and_json_ready(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker()
    tracker.track("1", "e")
    assert tracker.flush(timeout=5)
    stats = tracker.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.accepted = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(stats)) == stats
    as_dict = json.loads(json.dumps(stats.as_dict()))
    assert as_dict["delivered"] == 1 and as_dict["requests"] == {"200": 1}
    assert as_dict["delivery_latency"]["count"] == 1 and as_dict["counters"]["accepted"] == 1
    assert "delivered=1" in stats.format().splitlines()[0]
    later = tracker.stats()
    assert later is not stats and later.delivered == stats.delivered


# -- what the sender records, against the emulator's own accounting --------------------------------


def test_counters_match_the_emulator_after_a_run_with_faults(make_tracker: TrackerFactory,
                                                            emulator: Emulator) -> None:
    emulator.set_faults(error_rate=0.25, reset_rate=0.1, seed=11)
    errors: list[DeliveryError] = []
    tracker = make_tracker(batch_bytes=4096, max_retries=50, retry_budget=60, on_error=errors.append, senders=2)
    total, bad = 3000, 0
    for i in range(total):
        if i % 97 == 0:
            # Encodable, so the core queues it; Customer.io (the emulator) rejects it in a 207: permanent.
            tracker.send_operation({"type": "person", "identifiers": {"id": f"bad-{i}"}, "action": "levitate"})
            bad += 1
        else:
            tracker.track(f"u{i % 40}", "faulty", {"i": i})
    assert tracker.flush(timeout=30)
    emulator.clear_faults()
    seen = emulator.stats()
    stats = tracker.stats()

    assert stats.accepted == total and stats.invalid == 0 and stats.dropped_total == 0
    assert stats.delivered == seen["operations"] == total - bad
    assert stats.failed_total == seen["operations_rejected"] == bad == sum(len(e.ops) for e in errors)
    assert stats.failed == {"invalid": bad}
    transient = seen["faults"]["error"] + seen["faults"]["reset"]
    assert seen["faults"]["error"] > 0 and seen["faults"]["reset"] > 0
    assert stats.retried >= transient
    # Every answer the tracker counted is one the emulator gave, status by status; a reset has none.
    assert {status: n for status, n in stats.requests.items() if status != "error"} == seen["by_status"]
    assert stats.requests.get("error", 0) >= seen["faults"]["reset"]
    accepted_batches = stats.requests.get("200", 0) + stats.requests.get("207", 0)
    assert stats.request_latency.count == sum(stats.requests.values())
    assert stats.batch_size.count == accepted_batches and stats.batch_size.sum == total
    assert stats.batch_bytes.count == accepted_batches and stats.batch_bytes.sum == stats.bytes_sent
    assert 0 < stats.bytes_sent <= seen["bytes_received"]
    assert stats.delivery_latency.count == total - bad
    assert stats.queued_ops == {"us": 0} and stats.queued_bytes == {"us": 0} and stats.in_flight == 0
    assert stats.bucket_tokens == {}  # rate_limit=0 in these tests: no bucket


class _TimedDestination:
    """Wraps the real destination and records, independently of the core, what the sender's metrics
    claim to measure: each request's duration, and per delivered op the time since its call."""

    def __init__(self, inner: Any, called_at: dict[str, float]) -> None:
        self.name = inner.name
        self._inner = inner
        self._called_at = called_at
        self.latencies: list[float] = []
        self.batch_sizes: list[float] = []
        self.end_to_end: list[float] = []
        self._lock = threading.Lock()

    def send(self, body: bytes) -> Outcome:
        started = time.perf_counter()
        outcome: Outcome = self._inner.send(body)
        finished = time.perf_counter()
        answered = time.monotonic()
        with self._lock:
            self.latencies.append(finished - started)
            if outcome.kind in ("delivered", "partial"):
                ops = json.loads(body)["batch"]
                self.batch_sizes.append(len(ops))
                self.end_to_end.extend(answered - self._called_at[op["id"]] for op in ops)
        return outcome

    def probe(self) -> bool:
        return bool(self._inner.probe())

    def close(self) -> None:
        self._inner.close()


def test_histogram_quantiles_within_one_bucket_of_recorded_timings(make_tracker: TrackerFactory,
                                                                   emulator: Emulator) -> None:
    # Server latency spread over 2..32 ms so the quantiles fall in different buckets.
    emulator.set_faults(latency=0.002, latency_jitter=0.03, seed=5)
    called_at: dict[str, float] = {}
    session = make_session(2)  # one connection per sender, as the tracker's own session keeps
    config = Config(site_id=SITE_ID, api_key=API_KEY, endpoint=emulator.url)
    # The destination the tracker would build, wrapped and injected: Tracker(destination=...) is the seam.
    timed = _TimedDestination(TrackV2Destination.from_config(config, "us", session), called_at)
    tracker = make_tracker(batch_bytes=2048, senders=2, destination=timed)
    for i in range(2000):
        event_id = _core.ulid()
        called_at[event_id] = time.monotonic()
        tracker.track(f"u{i % 30}", "timed", {"i": i}, id=event_id)
    assert tracker.flush(timeout=30)
    stats = tracker.stats()

    assert stats.request_latency.count == len(timed.latencies) >= 100
    assert stats.delivery_latency.count == len(timed.end_to_end) == 2000
    assert stats.batch_size.count == len(timed.batch_sizes)
    for name, summary, reference in (("request latency", stats.request_latency, timed.latencies),
                                     ("delivery latency", stats.delivery_latency, timed.end_to_end),
                                     ("batch size", stats.batch_size, timed.batch_sizes)):
        for q, reported in ((0.5, summary.p50), (0.95, summary.p95), (0.99, summary.p99)):
            assert_within_one_bucket(reported, exact_quantile(reference, q), f"{name} q{q}")
        assert_within_one_bucket(summary.max, max(reference), f"{name} max")
        assert summary.sum == pytest.approx(sum(reference), rel=0.05)
    # Batch sizes are the same numbers on both sides: the quantile is exactly the bucket's bound.
    exact = exact_quantile(timed.batch_sizes, 0.5)
    assert stats.batch_size.p50 == min(upper_bound(bucket_of(exact)), max(timed.batch_sizes))
    assert stats.request_latency.p50 < stats.request_latency.p99 <= stats.request_latency.max
    session.close()


def test_metrics_off_keeps_counters_and_leaves_histograms_empty(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker(metrics=False)
    for i in range(50):
        tracker.track("1", "e", {"i": i})
    assert tracker.flush(timeout=5)
    stats = tracker.stats()
    assert stats.metrics_enabled is False
    assert stats.accepted == stats.delivered == 50 and stats.requests.get("200", 0) >= 1
    assert stats.request_latency == stats.delivery_latency == stats.batch_size == HistogramSummary()


def test_gauges_show_queued_ops_per_region_in_flight_batches_and_tokens(emulator: Emulator,
                                                                         make_tracker: TrackerFactory) -> None:
    emulator.set_faults(latency=1.0)
    tracker = make_tracker(endpoints={"us": emulator.url, "eu": emulator.url}, rate_limit=50, rate_burst=5)
    tracker.track("a", "first", region="us")
    # The one sender now sits in a 1 s request: what is tracked meanwhile stays queued.
    assert _wait(lambda: tracker.stats().in_flight == 1)
    for i in range(3):
        tracker.track("b", "queued", {"i": i}, region="eu")
    stats = tracker.stats()
    assert stats.in_flight == 1
    assert stats.queued_ops == {"us": 0, "eu": 3} and stats.queued_bytes["eu"] > 0
    assert set(stats.bucket_tokens) == {"us", "eu"} and all(0 <= t <= 5 for t in stats.bucket_tokens.values())
    emulator.clear_faults()
    assert tracker.flush(timeout=5)
    final = tracker.stats()
    assert final.in_flight == 0 and final.queued_ops == {"us": 0, "eu": 0} and final.delivered == 4


def test_queued_gauges_count_what_is_waiting(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker(flush_interval=30.0)  # the linger holds everything back
    tracker.flush(timeout=0.5)  # senders started and idle
    for i in range(7):
        tracker.track("1", "waiting", {"i": i})
    stats = tracker.stats()
    assert stats.queued_ops == {"us": 7} and stats.queued_bytes["us"] > 7 * 50
    assert stats.accepted == 7 and stats.delivered == 0


class _ListSpool:
    def __init__(self) -> None:
        self.ops: list[bytes] = []

    def append(self, ops: Any, *, region: str = "us") -> None:
        self.ops.extend(ops)


def test_a_batch_abandoned_to_the_spool_counts_as_spooled_not_delivered(make_tracker: TrackerFactory,
                                                                         emulator: Emulator) -> None:
    emulator.set_faults(error_rate=1.0)
    spool = _ListSpool()
    tracker = make_tracker(max_retries=100, retry_budget=100, spool=spool)
    for i in range(5):
        tracker.track("s", "stranded", {"i": i})
    assert _wait(lambda: tracker.stats().retried >= 1)  # the batch is in its retry loop
    tracker.close(timeout=0.2)
    stats = tracker.stats()
    assert len(spool.ops) == 5 and stats.spooled == 5
    assert stats.delivered == 0 and stats.failed_total == 0 and stats.delivery_latency.count == 0


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())
