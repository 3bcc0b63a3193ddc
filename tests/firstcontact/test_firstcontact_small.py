"""The smaller first-contact items: ``repr`` shows the endpoint (never the key), a call after ``close()``
logs one throttled warning and is counted, two Prometheus collectors with the same names are refused
by any registry."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ciotrack.metrics import PrometheusCollector
from ciotrack.testing import CaptureTracker
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory


def test_repr_shows_the_endpoint_never_the_key(make_tracker: TrackerFactory) -> None:
    tracker = make_tracker()
    text = repr(tracker)
    assert f"endpoint='{tracker.config.endpoint}'" in text and repr(SITE_ID) in text and API_KEY not in text
    default = Tracker(SITE_ID, API_KEY, region="eu")
    try:
        assert "endpoint='https://track-eu.customer.io'" in repr(default) and API_KEY not in repr(default)
    finally:
        default.close()
    captured = Tracker(destination=CaptureTracker().capture)
    assert "destination=" in repr(captured) and "endpoint=" not in repr(captured)
    captured.close()


def test_a_call_after_close_logs_one_warning_and_counts(make_tracker: TrackerFactory,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ciotrack")
    tracker = make_tracker()
    tracker.track("u1", "before")
    tracker.close(timeout=5)
    for _ in range(100):
        tracker.track("u1", "after")
    lines = [r for r in caplog.records if "after close()" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and lines[0].name.startswith("ciotrack.")
    assert API_KEY not in lines[0].getMessage()
    assert tracker.stats().dropped["closed"] == 100


@pytest.mark.parametrize("auto_describe", [False, True])
def test_two_collectors_with_the_same_names_are_refused(make_tracker: TrackerFactory, auto_describe: bool) -> None:
    billing, web = make_tracker(), make_tracker()
    registry = CollectorRegistry(auto_describe=auto_describe)  # False: prometheus_client's own default
    registry.register(PrometheusCollector(billing, labels={"service": "billing"}))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(web, labels={"service": "web"}))
    registry.register(PrometheusCollector(web, namespace="ciotrack_web"))
    exposition = generate_latest(registry).decode()
    assert exposition.count("# TYPE ciotrack_operations_delivered_total counter") == 1
    assert exposition.count("# TYPE ciotrack_web_operations_delivered_total counter") == 1


def test_module_level_functions_are_not_shadowed_by_submodules() -> None:
    import ciotrack
    import ciotrack.flush_outcome  # noqa: F401  (a submodule import sets a package attribute)
    import ciotrack.preflight  # noqa: F401

    assert callable(ciotrack.flush_result) and callable(ciotrack.check)
    assert ciotrack.flush_result.__module__ == "ciotrack" and ciotrack.check.__module__ == "ciotrack"
