"""Per-interval HDR histograms merged for the totals: the merge is exact, and empty intervals (a
drain with no samples) do not disturb it."""

from __future__ import annotations

import random

from hdrh.histogram import HdrHistogram

from ciotrack.loadtest.histogram import LatencyHistogram, summarize


def test_merged_intervals_equal_one_histogram_of_every_sample() -> None:
    rng = random.Random(3)
    intervals = [[rng.lognormvariate(4.4, 0.6) for _ in range(500)] for _ in range(6)]
    intervals.insert(3, [])  # a second without samples
    total = LatencyHistogram()
    whole = LatencyHistogram()
    for samples in intervals:
        interval = LatencyHistogram()
        for ms in samples:
            interval.record_ms(ms)
            whole.record_ms(ms)
        total.add(interval)
    assert summarize(total) == summarize(whole)
    every = sorted(ms for samples in intervals for ms in samples)
    assert abs(summarize(total)["min"] - every[0]) <= every[0] * 0.002  # 3 significant figures
    assert abs(summarize(total)["p99"] - every[int(len(every) * 0.99)]) <= every[-1] * 0.01


def test_encoded_totals_decode_to_the_same_counts() -> None:
    hist = LatencyHistogram()
    for ms in (0.5, 12.0, 250.0, 250.0, 90_000.0):
        hist.record_ms(ms)
    decoded = HdrHistogram.decode(hist.encode())
    assert decoded.get_total_count() == 5
    assert decoded.get_max_value() >= 90_000_000 * 0.999  # µs


def test_out_of_range_values_are_clamped_not_dropped() -> None:
    hist = LatencyHistogram()
    hist.record_ms(-1.0)
    hist.record_ms(10_000_000.0)  # about 2.8 hours: over the 10 minute range
    assert hist.count == 2
