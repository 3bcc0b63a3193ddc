"""What metrics cost ``track()``: the same call with ``metrics=True`` and ``metrics=False``.

Run: ``.venv/bin/python -m pytest benches/bench_metrics_cost.py --benchmark-only``. Each run is a fresh
tracker delivering to the emulator (in its own process) while the loop calls, as in
``bench_track.py``: 2000 rounds of 100 calls, pytest-benchmark's median per call. The two settings
alternate in five pairs (on/off, off/on, on/off, ...) so that drift on a noisy machine hits both alike;
the figure is the ratio of the medians of the five runs each, with the per-pair ratios beside it. A
first, uncounted run absorbs the session's first-run slowness.

What differs: counters are atomics on both settings (they are always kept); ``metrics=False`` skips the
histograms, i.e. request latency and batch size per request and the end-to-end latency of every
delivered operation, all recorded on the sender thread (``ack`` records with the GIL released). So the
figure measures how much that sender-side work slows the caller's thread down.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from conftest import API_KEY, SITE_ID, BenchReport

PAIRS = 5
# The first timed run of a session is slower whichever the setting (measured: ~1.2x); a run 0 takes that
# hit and is not counted.
RUNS = [("on", 0)] + [(setting, n) for n in range(1, PAIRS + 1)
                      for setting in (("on", "off") if n % 2 else ("off", "on"))]
_medians: dict[str, list[float]] = {"on": [], "off": []}
DATA = {"total": 12.5, "currency": "EUR", "items": 3, "first": True, "cart": {"sku": "sku-1", "qty": 2}}


@pytest.mark.parametrize("setting,run", RUNS, ids=[f"metrics_{s}-{n}" if n else "warm-up" for s, n in RUNS])
def test_track_metrics_cost(benchmark: Any, emulator: Any, bench_report: BenchReport, quick: bool,
                            setting: str, run: int) -> None:
    import ciotrack

    tracker = ciotrack.Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, metrics=setting == "on")
    tracker.track("warm-up", "checkout", DATA)  # starts the sender before timing
    benchmark.group = "track() metrics cost"
    try:
        # A fixed number of calls, so the run stays within the queue's byte bound (see bench_track.py).
        benchmark.pedantic(tracker.track, args=("user-42", "checkout", DATA), rounds=100 if quick else 2000,
                           iterations=100, warmup_rounds=5)
        assert tracker.flush(timeout=120)
    finally:
        tracker.close(timeout=30)
    stats = tracker.stats()
    assert stats.failed_total == 0 and stats.dropped_total == 0 and stats.delivered == stats.accepted
    assert (stats.delivery_latency.count > 0) == (setting == "on")

    if run == 0:
        return
    _medians[setting].append(benchmark.stats.stats.median)
    if len(_medians["on"]) == len(_medians["off"]) == PAIRS:
        on, off = statistics.median(_medians["on"]), statistics.median(_medians["off"])
        bench_report.keep("metrics_cost", {"median_on_s": _medians["on"], "median_off_s": _medians["off"]})
        bench_report.add("metrics cost", "track() median, metrics=True", f"{on * 1e9:.0f} ns",
                         f"median of {PAIRS} runs' medians, sender delivering")
        bench_report.add("metrics cost", "track() median, metrics=False", f"{off * 1e9:.0f} ns",
                         "same, histograms off (counters stay)")
        pairs = [a / b for a, b in zip(_medians["on"], _medians["off"], strict=False)]
        bench_report.add("metrics cost", "ratio on/off", f"{on / off:.3f}",
                         f"per pair: {', '.join(f'{r:.2f}' for r in pairs)}")
