"""PrometheusCollector: registered in a fresh registry, scraped with generate_latest(), parsed back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ciotrack import _core
from ciotrack.emulator import Emulator
from ciotrack.metrics import PrometheusCollector
from ciotrack.tracker import Tracker

from conftest import TrackerFactory

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

FAMILIES = {
    "ciotrack_operations_accepted": "counter",
    "ciotrack_operations_invalid": "counter",
    "ciotrack_operations_deduplicated": "counter",
    "ciotrack_operations_dropped": "counter",
    "ciotrack_operations_delivered": "counter",
    "ciotrack_operations_failed": "counter",
    "ciotrack_operations_spooled": "counter",
    "ciotrack_operations_replayed": "counter",
    "ciotrack_retries": "counter",
    "ciotrack_requests": "counter",
    "ciotrack_sent_bytes": "counter",
    "ciotrack_batch_splits": "counter",
    "ciotrack_queued_operations": "gauge",
    "ciotrack_queued_bytes": "gauge",
    "ciotrack_in_flight_batches": "gauge",
    "ciotrack_in_flight_operations": "gauge",
    "ciotrack_rate_limit_tokens": "gauge",
    "ciotrack_concurrency_limit": "gauge",
    "ciotrack_requests_in_flight": "gauge",
    "ciotrack_overflow_operations": "gauge",
    "ciotrack_request_latency_seconds": "histogram",
    "ciotrack_request_latency_seconds_max": "gauge",
    "ciotrack_delivery_latency_seconds": "histogram",
    "ciotrack_delivery_latency_seconds_max": "gauge",
    "ciotrack_batch_operations": "histogram",
    "ciotrack_batch_operations_max": "gauge",
    "ciotrack_batch_size_bytes": "histogram",
    "ciotrack_batch_size_bytes_max": "gauge",
}


def scrape(registry: CollectorRegistry) -> tuple[dict[str, str], Samples]:
    text = generate_latest(registry).decode()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def test_scrape_parses_and_holds_every_metric_with_the_tracker_values(make_tracker: TrackerFactory,
                                                                       emulator: Emulator) -> None:
    emulator.set_faults(error_rate=0.3, seed=3)
    tracker = make_tracker(batch_bytes=2048, max_retries=50, rate_limit=1000, rate_burst=100)
    for i in range(300):
        tracker.track(f"u{i % 7}", "scraped", {"i": i})
    tracker.send_operation({"type": "person", "identifiers": {"id": "x"}, "action": "levitate"})
    tracker.identify("same", {"plan": "pro"})
    tracker.identify("same", {"plan": "pro"})  # deduplicated
    with pytest.raises(TypeError):
        tracker.track("u", "bad", {"s": {1}})  # invalid
    assert tracker.flush(timeout=20)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(tracker))
    types, samples = scrape(registry)
    stats = tracker.stats()

    assert types == FAMILIES
    assert samples[("ciotrack_operations_accepted_total", ())] == stats.accepted == 302
    assert samples[("ciotrack_operations_invalid_total", ())] == 1
    assert samples[("ciotrack_operations_deduplicated_total", (("kind", "identify"),))] == 1
    assert samples[("ciotrack_operations_delivered_total", ())] == stats.delivered == 301
    assert samples[("ciotrack_operations_failed_total", (("reason", "invalid"),))] == 1
    assert samples[("ciotrack_retries_total", ())] == stats.retried > 0
    assert samples[("ciotrack_requests_total", (("status", "200"),))] == stats.requests["200"]
    assert sum(v for (name, labels), v in samples.items() if name == "ciotrack_requests_total") == sum(
        stats.requests.values())
    assert samples[("ciotrack_sent_bytes_total", ())] == stats.bytes_sent > 0
    assert samples[("ciotrack_queued_operations", (("region", "us"),))] == 0
    assert samples[("ciotrack_in_flight_batches", ())] == 0
    assert 0 <= samples[("ciotrack_rate_limit_tokens", (("region", "us"),))] <= 100
    assert samples[("ciotrack_concurrency_limit", (("region", "us"),))] == stats.concurrency_limit["us"] >= 1
    assert samples[("ciotrack_requests_in_flight", (("region", "us"),))] == 0
    latency = stats.request_latency
    assert samples[("ciotrack_request_latency_seconds_count", ())] == latency.count == sum(stats.requests.values())
    assert samples[("ciotrack_request_latency_seconds_sum", ())] == pytest.approx(latency.sum)
    assert samples[("ciotrack_request_latency_seconds_bucket", (("le", "+Inf"),))] == latency.count
    assert [samples[("ciotrack_request_latency_seconds_bucket", (("le", repr(le)),))]
            for le, _ in latency.buckets] == [n for _, n in latency.buckets]
    assert samples[("ciotrack_request_latency_seconds_max", ())] == latency.max
    assert samples[("ciotrack_delivery_latency_seconds_count", ())] == 301
    assert samples[("ciotrack_batch_operations_sum", ())] == 302  # every accepted batch, 207 included
    assert samples[("ciotrack_batch_size_bytes_sum", ())] == stats.bytes_sent


def test_an_idle_tracker_scrapes_zeroes_in_every_bucket(make_tracker: TrackerFactory) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(make_tracker()))
    types, samples = scrape(registry)
    assert types == FAMILIES
    assert samples[("ciotrack_operations_accepted_total", ())] == 0
    assert samples[("ciotrack_request_latency_seconds_count", ())] == 0
    buckets = {dict(labels)["le"]: v for (name, labels), v in samples.items()
               if name == "ciotrack_request_latency_seconds_bucket"}
    assert len(buckets) == len(_core.histogram_bounds("request_latency_seconds")) + 1  # the series exist from the start
    assert set(buckets.values()) == {0}


def test_constant_labels_and_namespaces_let_two_trackers_share_a_registry(make_tracker: TrackerFactory) -> None:
    billing, web = make_tracker(), make_tracker()
    for i in range(3):
        billing.track("1", "paid", {"i": i})
    assert billing.flush(timeout=5)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PrometheusCollector(billing, labels={"service": "billing"}))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(web, labels={"service": "web"}))
    registry.register(PrometheusCollector(web, namespace="ciotrack_web"))
    _, samples = scrape(registry)
    assert samples[("ciotrack_operations_delivered_total", (("service", "billing"),))] == 3
    assert samples[("ciotrack_web_operations_delivered_total", ())] == 0
    assert samples[("ciotrack_queued_operations", (("region", "us"), ("service", "billing")))] == 0


def test_bad_namespace_is_refused(make_tracker: TrackerFactory) -> None:
    with pytest.raises(ValueError):
        PrometheusCollector(make_tracker(), namespace="9-lives")


def test_prometheus_client_is_optional() -> None:
    # ciotrack imports without prometheus_client; the collector says what to install.
    code = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        import ciotrack, ciotrack.tracker, ciotrack.stats, ciotrack.metrics
        t = ciotrack.Tracker(disabled=True)
        t.track("1", "e")
        assert t.stats().accepted == 1
        try:
            ciotrack.metrics.PrometheusCollector(t)
        except ImportError as exc:
            assert "ciotrack[prometheus]" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_disabled_tracker_is_scraped_too() -> None:
    with Tracker(disabled=True) as tracker:
        tracker.track("1", "e")
        registry = CollectorRegistry()
        registry.register(PrometheusCollector(tracker))
        _, samples = scrape(registry)
    assert samples[("ciotrack_operations_accepted_total", ())] == 1


def test_operations_held_in_a_batch_awaiting_its_retry_are_counted_so_the_counters_add_up(
        make_tracker: TrackerFactory, emulator: Emulator) -> None:
    # During an outage the operations sit in batches waiting for their next try: neither queued, delivered
    # nor lost. Only the batches were counted, so accepted - delivered - lost - queued was a gap of unknown
    # size in operations, exactly while it mattered.
    emulator.set_faults(error_rate=1.0, error_statuses=[503])
    tracker = make_tracker(max_retries=100_000, retry_budget=3600.0)
    for i in range(10):
        tracker.track("u", "held", {"i": i})
    deadline = time.monotonic() + 10  # a guard against hanging, not a timing assertion
    while emulator.stats()["by_status"].get("503", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(tracker))
    _, samples = scrape(registry)
    stats = tracker.stats()
    assert stats.delivered == stats.failed_total == stats.dropped_total == 0 and stats.in_flight >= 1
    assert stats.in_flight_ops >= 1
    assert stats.accepted == 10 == sum(stats.queued_ops.values()) + stats.in_flight_ops
    assert samples[("ciotrack_operations_accepted_total", ())] == 10 == (
        samples[("ciotrack_queued_operations", (("region", "us"),))] + samples[("ciotrack_in_flight_operations", ())])
    emulator.clear_faults()
    assert tracker.flush(timeout=10)
    final = tracker.stats()
    assert final.delivered == 10 and final.in_flight_ops == 0 and final.in_flight == 0
