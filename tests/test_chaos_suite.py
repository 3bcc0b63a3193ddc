"""Chaos: every transient fault at once, and still every event exactly once (issue 5).

The emulator answers 20 % of requests with 5xx, resets connections, applies some batches and then
drops the connection (so the client must retry a batch Customer.io already holds), adds latency
spikes, and throws a 429 storm in the middle. The tracker must deliver every accepted event exactly
once (event-id dedup at the emulator absorbs the retried copies), never call on_error, and retry with
the same ids. The longer 1M-event run is `benches/bench_chaos.py`.
"""

from __future__ import annotations

import threading

from ciotrack import _core
from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError

from conftest import TrackerFactory, all_events

EVENTS = 20_000


def test_every_event_exactly_once_through_5xx_resets_drops_spikes_and_a_429_storm(
    emulator: Emulator, make_tracker: TrackerFactory
) -> None:
    errors: list[DeliveryError] = []
    emulator.set_faults(error_rate=0.2, reset_rate=0.05, apply_then_drop_rate=0.1,
                        latency_jitter=0.03, seed=7)
    tracker = make_tracker(
        senders=3,
        batch_bytes=20_000,  # ~100 ops a request: hundreds of requests, so every fault fires many times
        max_retries=1000, retry_budget=300, backoff_base=0.005, backoff_cap=0.05,
        on_error=errors.append,
    )
    ids = [_core.ulid() for _ in range(EVENTS)]
    half = EVENTS // 2
    for i in range(half):
        tracker.track(f"user-{i % 500}", "chaos", {"i": i, "v": i * 0.5}, id=ids[i])
    storm = threading.Timer(0.05, emulator.storm_429, kwargs={"seconds": 1.0, "retry_after": 1})
    storm.start()
    for i in range(half, EVENTS):
        tracker.track(f"user-{i % 500}", "chaos", {"i": i, "v": i * 0.5}, id=ids[i])
    storm.join()

    assert tracker.flush(timeout=120), "flush timed out under chaos"
    emulator.clear_faults()

    stored = all_events(emulator.state())
    stored_ids = [e["id"] for e in stored]
    assert len(stored_ids) == EVENTS, "an event was lost or stored twice"
    assert set(stored_ids) == set(ids)
    assert sorted(e["data"]["i"] for e in stored) == list(range(EVENTS))
    assert errors == []

    faults = emulator.stats()["faults"]
    assert faults["error"] > 0 and faults["reset"] > 0 and faults["apply_then_drop"] > 0
    assert faults["storm_429"] > 0
    # A batch applied and then dropped was sent again with the same ids: the emulator saw each
    # retried id again and ignored it. New ids on retry would have stored duplicates instead.
    assert emulator.stats()["duplicates"] >= faults["apply_then_drop"]
    counters = tracker.stats().counters
    assert counters["delivered"] == EVENTS
    assert counters["retried"] >= faults["error"] + faults["reset"] + faults["apply_then_drop"]
