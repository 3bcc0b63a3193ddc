"""Latency and batch metrics as Prometheus histograms (issue 12: a fleet's figures must aggregate).

A real tracker delivers to the emulator and is scraped over HTTP (``/metrics`` served by
prometheus_client on 127.0.0.1); its ``_bucket{le=...}`` series are checked against what the emulator
itself logged (every batch's operation count and body size, exactly) and against ``stats()``. A real
``ciotrack worker`` is scraped too: its latency buckets have the same ``le`` labels, so one
``sum by (le)`` adds trackers and workers.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from ciotrack.emulator import Emulator
from ciotrack.fleet.streams import StreamKeys
from ciotrack.metrics import PrometheusCollector
from ciotrack.stats import HistogramSummary
from redis_harness import RedisServer

from .fleet_procs import API_KEY, SITE_ID, WorkerProcess, redis_client, wait_until
from conftest import TrackerFactory, free_port

KEYS = StreamKeys.for_site(SITE_ID)
HISTOGRAMS = {  # exported name -> the Stats field
    "ciotrack_request_latency_seconds": "request_latency",
    "ciotrack_delivery_latency_seconds": "delivery_latency",
    "ciotrack_batch_operations": "batch_size",
    "ciotrack_batch_size_bytes": "batch_bytes",
}
Buckets = list[tuple[float, float]]  # (le, cumulative count), +Inf last


def scrape(url: str) -> dict[str, Any]:
    """``{family name: {"type", "buckets": [(le, n)...], "count", "sum"}}`` from a live /metrics."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        entry: dict[str, Any] = {"type": family.type, "buckets": []}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                entry["buckets"].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
        out[family.name] = entry
    return out


def at_most(values: list[float], le: float) -> int:
    return sum(1 for v in values if v <= le)


def assert_a_valid_histogram(name: str, family: dict[str, Any]) -> Buckets:
    buckets: Buckets = family["buckets"]
    assert family["type"] == "histogram", name
    les = [le for le, _ in buckets]
    assert les == sorted(les) and les[-1] == math.inf, f"{name}: le not ascending to +Inf: {les}"
    counts = [n for _, n in buckets]
    assert all(a <= b for a, b in zip(counts, counts[1:], strict=False)), f"{name}: not cumulative: {counts}"
    assert counts[-1] == family["count"], f"{name}: +Inf {counts[-1]} != _count {family['count']}"
    return buckets


def assert_agrees_with_stats(name: str, buckets: Buckets, family: dict[str, Any], h: HistogramSummary) -> None:
    assert family["count"] == h.count > 0 and family["sum"] == pytest.approx(h.sum)
    assert buckets[:-1] == [(le, float(n)) for le, n in h.buckets], name
    # The quantiles come from the same log buckets and every le is one of their edges, so the rank of
    # each quantile is reached exactly at the bounds at or above it, and at none below.
    for q, value in ((0.5, h.p50), (0.95, h.p95), (0.99, h.p99)):
        rank = math.ceil(q * h.count)
        for le, n in buckets[:-1]:
            assert (n >= rank) == (le >= value), f"{name}: p{q * 100:g}={value}, le={le}: {n} vs rank {rank}"


@pytest.fixture
def metrics_url(make_tracker: TrackerFactory) -> Iterator[tuple[Any, str]]:
    """A tracker whose collector is served on a real /metrics endpoint; yields (tracker, url)."""
    tracker = make_tracker(flush_interval=60)  # batches go out only at flush(): one per flush
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(tracker))
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield tracker, f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        thread.join(5)


def test_scraped_buckets_are_exact_against_the_emulator_and_agree_with_stats(
        metrics_url: tuple[Any, str], emulator: Emulator) -> None:
    tracker, url = metrics_url
    # Batch sizes on the count bounds (1, 2, 5, 10, 20, 40, 80: "<= le" must include them) and between.
    fast, slow = (1, 2, 3, 5, 10, 20, 40), (7, 80)
    seq = 0
    for phase, sizes in (("fast", fast), ("slow", slow)):
        if phase == "slow":
            emulator.set_faults(latency=0.1)  # every request of this phase takes at least 0.1 s
        for size in sizes:
            for _ in range(size):
                tracker.track(f"u{seq % 5}", "scraped", {"seq": seq, "pad": "x" * (seq % 97)})
                seq += 1
            assert tracker.flush(timeout=20)
    families = scrape(url)
    stats = tracker.stats()
    answered = [r for r in emulator.requests() if r["status"] in (200, 207)]
    assert stats.delivered == seq == sum(len(json.loads(r["body"])["batch"]) for r in answered)

    checked = {name: assert_a_valid_histogram(name, families[name]) for name in HISTOGRAMS}
    for name, field in HISTOGRAMS.items():
        assert_agrees_with_stats(name, checked[name], families[name], getattr(stats, field))

    # Independently of the tracker: the emulator's own log of every batch it accepted.
    ops = [float(len(json.loads(r["body"])["batch"])) for r in answered]
    sizes = [float(len(r["body"])) for r in answered]
    assert sorted(ops) == sorted(float(n) for n in fast + slow)
    for le, n in checked["ciotrack_batch_operations"][:-1]:
        assert n == at_most(ops, le), f"batch_operations le={le}"
    for le, n in checked["ciotrack_batch_size_bytes"][:-1]:
        assert n == at_most(sizes, le), f"batch_size_bytes le={le}"
    # Latency: one observation per request; the slow phase's requests all sit above 0.09375 s.
    latency = dict(checked["ciotrack_request_latency_seconds"])
    assert latency[math.inf] == len(emulator.requests()) == len(fast) + len(slow)
    assert latency[0.09375] <= len(fast)
    assert families["ciotrack_request_latency_seconds"]["sum"] >= 0.1 * len(slow)
    assert latency[0.046875] <= latency[0.0625] <= latency[0.09375]
    delivery = dict(checked["ciotrack_delivery_latency_seconds"])
    assert delivery[math.inf] == seq and delivery[0.09375] <= sum(fast)


def test_worker_latency_buckets_share_the_trackers_le_so_a_fleet_sums(
        metrics_url: tuple[Any, str], redis_server: RedisServer, tmp_path: Path) -> None:
    tracker, tracker_url = metrics_url
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        port = free_port()
        # One request per entry (no coalescing), so the worker's request count is known: three.
        worker = WorkerProcess(redis_server.url, em.url, "--rate-limit", "0", "--metrics-port", str(port),
                               "--no-coalesce", log=tmp_path / "w.log")
        try:
            from ciotrack import Tracker

            producer = Tracker(SITE_ID, redis_url=redis_server.url, flush_interval=60)
            for i in range(30):
                producer.track(f"c{i % 3}", "fleet", {"p": 0, "seq": i})
                if i % 10 == 9:
                    assert producer.flush(timeout=20)  # three stream entries
            producer.close(timeout=10)
            client = redis_client(redis_server.url)
            assert wait_until(lambda: em.stats()["events"] >= 30 and client.xlen(KEYS.work) == 0
                              and _worker_requests(port) >= 3, 30)
            worker_families = scrape(f"http://127.0.0.1:{port}/metrics")
        finally:
            assert worker.terminate() == 0
        worker_requests = sum(int(v) for v in em.stats()["by_status"].values())
    for _ in range(4):
        tracker.track("u", "direct")
    assert tracker.flush(timeout=20)
    tracker_families = scrape(tracker_url)

    worker_latency = assert_a_valid_histogram("worker", worker_families["ciotrack_worker_request_latency_seconds"])
    tracker_latency = assert_a_valid_histogram("tracker", tracker_families["ciotrack_request_latency_seconds"])
    assert [le for le, _ in worker_latency] == [le for le, _ in tracker_latency]
    assert worker_latency[-1][1] == worker_requests and tracker_latency[-1][1] == 1
    worker_delivery = assert_a_valid_histogram("worker", worker_families["ciotrack_worker_delivery_latency_seconds"])
    assert [le for le, _ in worker_delivery] == [le for le, _ in tracker_latency]
    assert worker_delivery[-1][1] == 3  # one per acknowledged entry
    # What `sum by (le)` computes over both: still a histogram, counting every request of the fleet.
    fleet = [(le, a + b) for (le, a), (_, b) in zip(worker_latency, tracker_latency, strict=True)]
    assert_a_valid_histogram("fleet", {"type": "histogram", "buckets": fleet, "count": worker_requests + 1})


def _worker_requests(port: int) -> float:
    try:
        family = scrape(f"http://127.0.0.1:{port}/metrics")["ciotrack_worker_request_latency_seconds"]
    except OSError:
        return 0.0  # not listening yet
    return float(family.get("count", 0.0))
