"""Never lose an event, in one process: overflow policies, the disk spool (outage, overflow, size cap,
regions, recovery), sync mode and flush_async. Real sockets against the emulator throughout."""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from collections import Counter
from typing import Any

import pytest

from ciotrack import _core
from ciotrack.config import Config
from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError
from ciotrack.spool import Spool, segments, spool_directory
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory, all_events, flush_async_counting_loop_ticks, free_port


def spooled(spool_dir: pathlib.Path, site_id: str = SITE_ID) -> list[tuple[str, dict[str, Any]]]:
    """(region, op) of every op on disk, in replay order; the files are left in place."""
    spool = Spool(spool_directory(spool_dir, site_id))
    out: list[tuple[str, dict[str, Any]]] = []
    try:
        for segment in spool.claim():
            out.extend((region, json.loads(op)) for region, ops in segment.records() for op in ops)
            segment.release()
    finally:
        spool.close()
    return out


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def new_ciotrack_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Sender/spooler/probe threads started since ``before`` (sync mode must start none)."""
    return [t for t in set(threading.enumerate()) - before if t.name.startswith(("ciotrack-sender", "ciotrack-spool"))]


def stored_ids(emulator: Emulator) -> Counter[str]:
    return Counter(e["id"] for e in all_events(emulator.state()))


# -- overflow policies ------------------------------------------------------------------------------

def test_default_settings_take_a_50k_burst_without_a_drop(emulator: Emulator) -> None:
    drops: list[tuple[str, int]] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, on_drop=lambda r, n: drops.append((r, n)))
    try:
        assert tracker.config.on_full == "drop_newest" and tracker.config.max_queue_bytes == 64 * 1024 * 1024
        for i in range(50_000):
            tracker.track(f"burst-{i % 500}", "burst", {"i": i, "sku": "A-1234", "price": 12.5})
        stats = tracker.stats()
        assert stats.dropped_total == 0 and stats.accepted == 50_000
        assert tracker.flush(timeout=60)
    finally:
        tracker.close(timeout=10)
    assert drops == []
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(50_000))


def test_overflow_policy_defaults_follow_spool_dir(tmp_path: pathlib.Path) -> None:
    assert Config(site_id="s", api_key="k").on_full == "drop_newest"
    assert Config(site_id="s", api_key="k", spool_dir=tmp_path).on_full == "spool"
    assert Config(site_id="s", api_key="k", spool_dir=tmp_path, on_full="block").on_full == "block"
    assert Config.from_env({"CIOTRACK_SPOOL_DIR": str(tmp_path)}, site_id="s", api_key="k").on_full == "spool"


def test_drop_newest_counts_reports_and_throttles_its_warning(make_tracker: TrackerFactory, emulator: Emulator,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(max_queue_ops=10, flush_interval=5.0, on_drop=lambda r, n: drops.append((r, n)))
    tracker.flush(timeout=1)  # senders started, holding the long linger
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        for i in range(50):
            tracker.track("n", "e", {"i": i})
    assert sum(n for r, n in drops if r == "queue_full") == 40
    assert tracker.stats().dropped["queue_full"] == 40
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1  # 40 drops, one line
    assert tracker.flush(timeout=10)
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(10))


def test_drop_oldest_keeps_the_newest_and_reports_evictions(make_tracker: TrackerFactory,
                                                            emulator: Emulator) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(on_full="drop_oldest", max_queue_ops=10, flush_interval=5.0,
                           on_drop=lambda r, n: drops.append((r, n)))
    tracker.flush(timeout=1)
    for i in range(30):
        tracker.track("o", "e", {"i": i})
    assert tracker.flush(timeout=10)
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(20, 30))
    assert sum(n for r, n in drops if r == "evicted_oldest") == 20
    assert tracker.stats().dropped["evicted_oldest"] == 20


def test_block_policy_waits_for_room_and_loses_nothing(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    emulator.set_faults(latency=0.02)
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(on_full="block", block_timeout=10.0, max_queue_ops=20, batch_bytes=2048,
                           on_drop=lambda r, n: drops.append((r, n)))
    for i in range(300):
        tracker.track("b", "e", {"i": i})
    assert tracker.flush(timeout=30)
    assert drops == [] and tracker.stats().dropped_total == 0
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(300))


def test_block_policy_drops_after_its_timeout_when_nothing_moves(make_tracker: TrackerFactory,
                                                                 emulator: Emulator) -> None:
    emulator.set_faults(slow_read=5.0)
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(on_full="block", block_timeout=0.2, max_queue_ops=5, flush_interval=5.0,
                           on_drop=lambda r, n: drops.append((r, n)), timeout=(1.0, 10.0))
    for i in range(5):
        tracker.track("b", "e", {"i": i})
    started = time.monotonic()
    tracker.track("b", "e", {"i": 5})  # the lane is full and nobody takes from it: blocks, then drops
    assert time.monotonic() - started >= 0.15
    assert drops == [("queue_full", 1)] and tracker.stats().dropped["queue_full"] == 1
    emulator.clear_faults()


# -- the spool: overflow, outage, recovery ----------------------------------------------------------

def test_full_queue_spills_to_the_spool_and_everything_is_replayed(make_tracker: TrackerFactory,
                                                                   emulator: Emulator,
                                                                   tmp_path: pathlib.Path) -> None:
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(spool_dir=tmp_path, max_queue_ops=50, batch_bytes=4096,
                           on_drop=lambda r, n: drops.append((r, n)))
    assert tracker.config.on_full == "spool"
    ids = [_core.ulid() for _ in range(3000)]
    for i, event_id in enumerate(ids):
        tracker.track(f"p{i % 7}", "spill", {"i": i}, id=event_id)
    assert emulator.wait_for(lambda: sum(stored_ids(emulator).values()) >= 3000, timeout=60)
    assert tracker.flush(timeout=10)
    stats = tracker.stats()
    assert stats.overflowed > 0 and stats.spooled == stats.overflowed
    assert wait_until(lambda: tracker.stats().replayed == stats.spooled)
    assert stored_ids(emulator) == Counter(ids)  # every event once, with the id it was given
    assert emulator.stats()["duplicates"] == 0
    assert drops == []
    tracker.close(timeout=5)
    assert spooled(tmp_path) == []


def test_outage_past_the_retry_budget_spools_and_recovery_replays_in_order(
        make_tracker: TrackerFactory, emulator: Emulator, tmp_path: pathlib.Path) -> None:
    errors: list[DeliveryError] = []
    emulator.set_faults(error_rate=1.0)  # every request answers 5xx: Customer.io is "down"
    # senders=1: strict order (adaptive concurrency may send the replayed batches side by side).
    tracker = make_tracker(spool_dir=tmp_path, retry_budget=0.3, batch_bytes=8192, on_error=errors.append, senders=1)
    ids = [_core.ulid() for _ in range(200)]
    for i, event_id in enumerate(ids):
        tracker.track("out", "outage", {"i": i}, id=event_id)
    assert tracker.flush(timeout=20)  # finished = delivered, failed or spooled; here: spooled
    assert tracker.stats().spooled == 200 and tracker.stats().delivered == 0
    assert stored_ids(emulator) == Counter()

    emulator.clear_faults()
    tracker.track("out", "live")  # its delivery tells the tracker the API is back: replay starts
    assert emulator.wait_for(lambda: sum(stored_ids(emulator).values()) >= 201, timeout=20)
    events = emulator.state()["people"]["out"]["events"]
    replayed = [e for e in events if e["name"] == "outage"]
    assert [e["id"] for e in replayed] == ids  # original ids, original order
    assert errors == []
    tracker.close(timeout=5)
    assert spooled(tmp_path) == []


def test_an_unreachable_api_sends_batches_to_disk_at_once_not_after_the_retry_budget(
        tmp_path: pathlib.Path) -> None:
    # Default retry budget (120 s): were each batch held that long, a crash during an outage would
    # lose the whole queue. A few requests without any answer mark the API down instead.
    tracker = Tracker(SITE_ID, API_KEY, endpoint=f"http://127.0.0.1:{free_port()}", spool_dir=tmp_path,
                      rate_limit=0, batch_bytes=4096)
    try:
        assert tracker.config.retry_budget == 120.0
        for i in range(2000):
            tracker.track("down", "e", {"i": i})
        assert wait_until(lambda: tracker.stats().spooled == 2000, timeout=20)
        assert tracker.stats().queued_ops["us"] == 0 and tracker.stats().in_flight == 0
    finally:
        tracker.close(timeout=2)
    assert sorted(op["attributes"]["i"] for _, op in spooled(tmp_path)) == list(range(2000))


def test_recovery_without_traffic_is_found_by_the_probe(make_tracker: TrackerFactory, emulator: Emulator,
                                                        tmp_path: pathlib.Path) -> None:
    emulator.set_faults(error_rate=1.0)
    tracker = make_tracker(spool_dir=tmp_path, retry_budget=0.2)
    for i in range(50):
        tracker.track("probe", "e", {"i": i})
    assert tracker.flush(timeout=20) and tracker.stats().spooled == 50
    emulator.clear_faults()  # no more calls: only the probe can notice
    assert emulator.wait_for(lambda: len(all_events(emulator.state())) >= 50, timeout=20)
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(50))
    assert any(r["path"] == "/api/v1/accounts/region" for r in emulator.requests())


def test_spool_size_cap_evicts_oldest_first_and_counts_it(make_tracker: TrackerFactory, emulator: Emulator,
                                                          tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    drops: list[tuple[str, int]] = []
    emulator.set_faults(error_rate=1.0)
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 16384)  # small segments, so eviction has a grain
    tracker = make_tracker(spool_dir=tmp_path, spool_max_bytes=65536, retry_budget=0.05, batch_bytes=8192,
                           on_drop=lambda r, n: drops.append((r, n)), senders=1)  # one sender: spooled in order
    for i in range(2000):
        tracker.track("cap", "e", {"i": i, "pad": "x" * 40})
    assert tracker.flush(timeout=30)
    tracker.close(timeout=5)
    evicted = sum(n for r, n in drops if r == "spool_evicted")
    assert evicted > 0 and tracker.stats().dropped["spool_evicted"] == evicted
    kept = [op["attributes"]["i"] for _, op in spooled(tmp_path)]
    assert len(kept) == 2000 - evicted
    assert kept == list(range(evicted, 2000))  # the oldest went first; the rest is in order

    emulator.clear_faults()
    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=tmp_path, rate_limit=0) as again:
        assert again.flush(timeout=20)
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(evicted, 2000))


def test_each_region_keeps_its_own_spool_records(tmp_path: pathlib.Path) -> None:
    with Emulator(workspaces={SITE_ID: API_KEY}) as us, Emulator(workspaces={SITE_ID: API_KEY}, region="eu") as eu:
        for em in (us, eu):
            em.set_faults(error_rate=1.0)
        options: dict[str, Any] = dict(endpoints={"us": us.url, "eu": eu.url}, spool_dir=tmp_path, rate_limit=0,
                                       retry_budget=0.2, flush_interval=0.02, backoff_base=0.01,
                                       max_queue_ops=5, region_for=lambda cid: "eu" if cid.startswith("eu") else "us")
        tracker = Tracker(SITE_ID, API_KEY, **options)
        for i in range(40):  # the lanes hold 5 each: most go through the overflow lists
            tracker.track(f"eu-{i}" if i % 2 else f"us-{i}", "e", {"i": i})
        assert tracker.flush(timeout=20)
        tracker.close(timeout=5)
        on_disk = spooled(tmp_path)
        assert len(on_disk) == 40
        assert all(op["identifiers"]["id"].startswith(region) for region, op in on_disk)
        for em in (us, eu):
            em.clear_faults()
        with Tracker(SITE_ID, API_KEY, **options) as again:
            assert again.flush(timeout=20)
        assert sorted(e["data"]["i"] for e in all_events(us.state())) == list(range(0, 40, 2))
        assert sorted(e["data"]["i"] for e in all_events(eu.state())) == list(range(1, 40, 2))


def test_spool_is_per_workspace(tmp_path: pathlib.Path) -> None:
    assert spool_directory(tmp_path, "abc123") == tmp_path / "site-abc123"
    odd = spool_directory(tmp_path, "../../etc")
    assert odd.parent == tmp_path and ".." not in odd.name


# -- sync mode and flush_async ----------------------------------------------------------------------

def test_sync_mode_spools_at_close_and_the_next_sync_flush_replays(emulator: Emulator,
                                                                   tmp_path: pathlib.Path) -> None:
    port = free_port()
    threads_before = set(threading.enumerate())
    down = Tracker(SITE_ID, API_KEY, endpoint=f"http://127.0.0.1:{port}", sync=True, spool_dir=tmp_path,
                   backoff_base=0.01, rate_limit=0)
    for i in range(100):
        down.track("sync", "e", {"i": i})
    # Nothing listens there: after a few unanswered requests the API counts as down, and the flush
    # finishes by spooling (on the calling thread: sync mode starts no thread).
    assert down.flush(timeout=10)
    assert down.stats().spooled == 100 and down.stats().delivered == 0
    down.close(timeout=0.2)
    assert len(spooled(tmp_path)) == 100
    assert not new_ciotrack_threads(threads_before)

    up = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, sync=True, spool_dir=tmp_path, rate_limit=0)
    up.track("sync", "live")
    assert up.flush(timeout=10)  # the spooled ops are delivered by the same inline flush
    up.close(timeout=5)
    events = emulator.state()["people"]["sync"]["events"]
    assert [e["data"]["i"] for e in events if e["name"] == "e"] == list(range(100))  # in spool order
    assert [e["name"] for e in events].count("live") == 1
    assert spooled(tmp_path) == []


def test_flush_async_replays_the_spool_without_blocking_the_loop(emulator: Emulator,
                                                                 tmp_path: pathlib.Path) -> None:
    port = free_port()
    with Tracker(SITE_ID, API_KEY, endpoint=f"http://127.0.0.1:{port}", spool_dir=tmp_path, rate_limit=0,
                 retry_budget=0.1, backoff_base=0.01) as down:
        for i in range(30):
            down.track("async", "e", {"i": i})
        assert down.flush(timeout=10)
    assert len(spooled(tmp_path)) == 30
    emulator.set_faults(latency=0.2)
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=tmp_path, rate_limit=0)

    ok, ticks = flush_async_counting_loop_ticks(tracker, 10)
    tracker.close(timeout=5)
    assert ok and ticks >= 3
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(30))


def test_sync_mode_with_flush_async_delivers_batched_from_a_worker_thread(emulator: Emulator) -> None:
    emulator.set_faults(latency=0.1)
    threads_before = set(threading.enumerate())
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, sync=True, rate_limit=0, batch_bytes=2048)
    for i in range(100):
        tracker.track("sync-async", "e", {"i": i})
    assert emulator.stats()["requests"] == 0  # sync mode: nothing leaves before a flush

    ok, ticks = flush_async_counting_loop_ticks(tracker, 20)
    tracker.close(timeout=5)
    assert ok and ticks >= 5  # the loop ran while the batches (100 ms each) went out
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(100))
    assert emulator.stats()["batches"] > 1  # still batched inside the flush
    assert not new_ciotrack_threads(threads_before)


def _ops_on_disk(directory: pathlib.Path) -> int:
    spool = Spool(directory)
    try:
        return sum(len(ops) for segment in spool.claim() for _, ops in segment.records())
    finally:
        spool.close()


def test_an_operation_larger_than_the_spool_is_refused_and_reported_as_such(tmp_path: pathlib.Path) -> None:
    refused: list[int] = []
    evicted: list[int] = []
    spool = Spool(tmp_path / "s", max_bytes=4096, on_refuse=refused.append, on_evict=evicted.append)
    assert spool.append([json.dumps({"pad": "x" * 5000}).encode()]) == 0  # says nothing was written
    spool.close()
    assert (refused, evicted) == ([1], [])  # a refusal, not an eviction of older records
    assert _ops_on_disk(tmp_path / "s") == 0


def _unreachable_with_small_spool(tmp_path: pathlib.Path, drops: list[tuple[str, int]]) -> Tracker:
    """A tracker whose endpoint refuses connections, with a 64 KiB spool under ``tmp_path``: every batch
    is spooled (or reported into ``drops``) once its one try fails."""
    return Tracker(SITE_ID, API_KEY, endpoint=f"http://127.0.0.1:{free_port()}", spool_dir=str(tmp_path),
                   spool_max_bytes=65536, rate_limit=0, max_retries=0, timeout=(0.2, 0.2),
                   on_drop=lambda reason, n: drops.append((reason, n)))


def test_a_batch_larger_than_the_spool_is_spooled_in_pieces_and_counted_once(tmp_path: pathlib.Path) -> None:
    # A batch whose record alone is over spool_max_bytes: written as smaller records, as much as the
    # cap holds; spooled counts only what was written, and every op is on disk or reported.
    drops: list[tuple[str, int]] = []
    tracker = _unreachable_with_small_spool(tmp_path, drops)
    for i in range(100):
        tracker.track(f"user-{i}", "big", {"pad": "x" * 1000})
    assert tracker.flush(timeout=20)
    tracker.close(timeout=5)
    stats = tracker.stats()
    on_disk = _ops_on_disk(spool_directory(tmp_path, SITE_ID))
    assert on_disk > 0
    assert on_disk + sum(n for _, n in drops) == 100
    assert stats.spooled - stats.dropped.get("spool_evicted", 0) == on_disk
    assert {reason for reason, _ in drops} <= {"spool_evicted"}


def test_a_tracker_reports_what_its_spool_refused_and_does_not_count_it_spooled(tmp_path: pathlib.Path) -> None:
    # Another replayer holds (claims) segments filling the cap: nothing can be evicted to make room.
    directory = spool_directory(tmp_path, SITE_ID)
    other = Spool(directory, max_bytes=65536)
    for i in range(6):
        other.append([json.dumps({"pad": "x" * 9000, "i": i}).encode()])
    held = list(other.claim())
    drops: list[tuple[str, int]] = []
    tracker = _unreachable_with_small_spool(tmp_path, drops)
    for i in range(10):
        tracker.track(f"user-{i}", "refused", {"pad": "x" * 1000})
    result = tracker.flush_result(timeout=20)
    tracker.close(timeout=5)
    for segment in held:
        segment.release()
    other.close()
    assert drops == [("spool_full", 10)]
    assert (result.spooled, result.dropped) == (0, 10)
    assert tracker.stats().dropped.get("spool_full") == 10
