"""``ciotrack worker`` over real processes: Redis, the emulator, producers using Tracker(redis_url=...)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ciotrack.emulator import Emulator
from ciotrack.fleet.producer import connect
from ciotrack.fleet.streams import StreamKeys

from .fleet_procs import API_KEY, SITE_ID, WorkerProcess, spawn_producer, stored_events, wait_producer, wait_until

KEYS = StreamKeys.for_site(SITE_ID)


@pytest.fixture
def spawned_emulator():  # type: ignore[no-untyped-def]
    em = Emulator.spawn(workspaces={SITE_ID: API_KEY})
    try:
        yield em
    finally:
        em.stop()


def test_producers_and_workers_deliver_every_event_once(redis_server, spawned_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workers = [WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0",
                             log=tmp_path / f"w{i}.log") for i in range(2)]
    producers = [spawn_producer(redis_server.url, p, 300, 1.0) for p in range(2)]
    outputs = [wait_producer(p) for p in producers]
    assert all(o.startswith("flushed True 300 redis") for o in outputs), outputs
    assert wait_until(lambda: len(stored_events(spawned_emulator)) >= 600, 30)
    counts = Counter(stored_events(spawned_emulator))
    assert set(counts) == {(p, i) for p in range(2) for i in range(300)} and set(counts.values()) == {1}
    client = connect(redis_server.url)
    assert wait_until(lambda: client.xlen(KEYS.work) == 0, 10)  # acknowledged and deleted
    assert [w.terminate() for w in workers] == [0, 0]
    assert client.xinfo_groups(KEYS.work)[0]["pending"] == 0
