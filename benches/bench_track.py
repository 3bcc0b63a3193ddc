"""``track()`` caller latency with the sender running, against the emulator in a subprocess.

Run: ``.venv/bin/python -m pytest benches/bench_track.py --benchmark-only``. The figure is
pytest-benchmark's median time per ``track()`` call: 2000 rounds of 100 calls each, so the timer's
own cost is amortised over 100 calls. The emulator runs in another process so its work does not take
this process's GIL; the tracker's sender thread does run here, delivering while the loop calls, as in
an application. Each call gets a fresh ULID, so event dedup never short-cuts it (its lookup is part of
the figure).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

SITE_ID, API_KEY = "bench-site", "bench-key"


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[Any]:
    from ciotrack.emulator import Emulator

    handle = Emulator.spawn(workspaces={SITE_ID: API_KEY})
    try:
        yield handle
    finally:
        handle.stop()


def test_track_five_properties(benchmark: Any, emulator_process: Any) -> None:
    import ciotrack

    tracker = ciotrack.Tracker(SITE_ID, API_KEY, endpoint=emulator_process.url, rate_limit=0)
    data = {"total": 12.5, "currency": "EUR", "items": 3, "first": True, "cart": {"sku": "sku-1", "qty": 2}}
    tracker.track("warm-up", "checkout", data)  # starts the sender before timing
    try:
        # A fixed number of calls (200k), so the run stays within the queue's default 64 MiB bound: an
        # open-ended calibration loop outruns any HTTP delivery and would measure drops, not track().
        benchmark.pedantic(tracker.track, args=("user-42", "checkout", data), rounds=2000, iterations=100,
                           warmup_rounds=5)
        assert tracker.flush(timeout=120)
    finally:
        tracker.close(timeout=30)
    counters = tracker.stats()["counters"]
    assert counters.get("failed", 0) == 0 and counters.get("dropped_full", 0) == 0
    assert counters["delivered"] == counters["accepted"]
