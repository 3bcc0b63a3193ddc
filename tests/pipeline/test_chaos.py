"""Chaos: a Tracker against an emulator (in its own process) answering 5xx, resetting connections,
storming 429s, stalling, and applying batches then dropping the connection before answering. The
emulator's state must hold every event exactly once, on_error must see nothing, and the retries
must have reused the event ids (the emulator saw ids again and did not store them twice)."""

from __future__ import annotations

import pathlib
import threading
from collections import Counter
from typing import Any

import pytest

from ciotrack.emulator import Emulator, EmulatorProcess
from ciotrack.errors import DeliveryError
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID

CHAOS: dict[str, Any] = {
    "error_rate": 0.2,              # 500/502/503
    "reset_rate": 0.05,             # connection reset mid-request
    "apply_then_drop_rate": 0.1,    # applied, then the connection dropped before the answer
    "latency": 0.002,
    "latency_jitter": 0.1,          # spikes up to 100 ms
    "seed": 20261124,
}


def run_chaos(tmp_path: pathlib.Path, count: int) -> None:
    emulator: EmulatorProcess = Emulator.spawn(workspaces={SITE_ID: API_KEY}, faults=CHAOS)
    errors: list[DeliveryError] = []
    drops: list[tuple[str, int]] = []
    try:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=tmp_path, rate_limit=0, senders=4,
                          batch_bytes=20_000, flush_interval=0.02, backoff_base=0.02, backoff_cap=0.5,
                          on_error=errors.append, on_drop=lambda r, n: drops.append((r, n)))
        halfway = threading.Event()

        def produce() -> None:
            for i in range(count):
                tracker.track(f"chaos-{i % 97}", "chaos", {"i": i, "sku": f"S-{i % 13}"})
                if i == count // 2:
                    halfway.set()

        producer = threading.Thread(target=produce)
        producer.start()
        assert halfway.wait(60)
        emulator.storm_429(1.0)  # a 429 storm (Retry-After: 1) while half the events are still coming
        producer.join(120)
        assert tracker.flush(timeout=120)
        # Anything that exhausted its retries went to the spool; the replay finishes it.
        assert emulator.wait_for(lambda: emulator.stats()["events"] >= count, timeout=120)
        tracker.close(timeout=30)

        stats = emulator.stats()
        state = emulator.state()
        ids = Counter(e["id"] for person in state["people"].values() for e in person["events"])
        numbers = sorted(e["data"]["i"] for person in state["people"].values() for e in person["events"])
        assert numbers == list(range(count))             # every event...
        assert len(ids) == count and max(ids.values()) == 1  # ...exactly once
        assert errors == [] and drops == []
        assert stats["faults"]["error"] > 0 and stats["faults"]["reset"] > 0
        assert stats["faults"]["storm_429"] > 0 and stats["faults"]["apply_then_drop"] > 0
        # Applied-then-dropped batches were sent again: the emulator saw those ids a second time
        # and kept one copy, so the retries carried the same ids.
        assert stats["duplicates"] >= stats["faults"]["apply_then_drop"]
        assert tracker.stats().retried > 0
    finally:
        emulator.stop()


def test_chaos_5k_events_arrive_exactly_once(tmp_path: pathlib.Path) -> None:
    run_chaos(tmp_path, 5_000)


@pytest.mark.slow
def test_chaos_50k_events_arrive_exactly_once(tmp_path: pathlib.Path) -> None:
    run_chaos(tmp_path, 50_000)
