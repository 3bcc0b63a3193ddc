"""``track()`` caller latency with the sender running, against the emulator in a subprocess.

Run: ``.venv/bin/python -m pytest benches/bench_track.py --benchmark-only``. The figure is
pytest-benchmark's median time per ``track()`` call (it calibrates many calls per timing round, so
the timer's own cost is amortised). The emulator runs in another process so its work does not take
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
        benchmark(tracker.track, "user-42", "checkout", data)
        assert tracker.flush(timeout=120)
    finally:
        tracker.close(timeout=30)
    counters = tracker.stats()["counters"]
    assert counters.get("failed", 0) == 0 and counters.get("dropped_full", 0) == 0
    assert counters["delivered"] == counters["accepted"]
