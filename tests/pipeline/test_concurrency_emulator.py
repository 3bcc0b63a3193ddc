"""Adaptive concurrency against the emulator over real sockets: with latency, the default tracker
(no ``senders``) raises its requests in flight until the workspace limit binds, draws no 429 and
loses nothing; ``senders=N`` stays a hard cap. Throughput figures are in benches/bench_saturation.py."""

from __future__ import annotations

from collections import Counter

from ciotrack import Tracker
from ciotrack.emulator import Emulator

from conftest import API_KEY, SITE_ID, all_events


def _run(emulator: Emulator, events: int, **options: object) -> Tracker:
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, batch_bytes=2048, flush_interval=0.02, **options)
    for i in range(events):
        tracker.track(f"user-{i % 50}", "checkout", {"i": i, "sku": "x" * 60})
    assert tracker.flush(timeout=60)
    return tracker


def test_the_default_tracker_fills_the_limit_at_100ms_without_429s() -> None:
    # 40 requests/s at 100 ms need 4 in flight: one sender would make at most 10 requests/s.
    with Emulator(workspaces={SITE_ID: API_KEY}, rate_limit=40, burst=10, faults={"latency": 0.1}) as emulator:
        tracker = _run(emulator, 2000, rate_limit=40)
        stats = tracker.stats()
        tracker.close()
        ids = Counter(e["data"]["i"] for e in all_events(emulator.state()))
        by_status = emulator.stats()["by_status"]
    assert sorted(ids) == list(range(2000)) and set(ids.values()) == {1}  # every event, exactly once
    assert "429" not in by_status
    assert stats.concurrency_limit["us"] >= 4
    assert stats.failed_total == 0 and not any(stats.dropped.values())


def test_fixed_senders_is_a_hard_cap() -> None:
    seen: list[int] = []
    with Emulator(workspaces={SITE_ID: API_KEY}, faults={"latency": 0.05}) as emulator:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, batch_bytes=2048, flush_interval=0.02,
                          senders=2, rate_limit=0)
        for i in range(1500):
            tracker.track("u", "e", {"i": i, "pad": "y" * 60})
            if i % 100 == 0:
                seen.append(tracker.stats().requests_in_flight["us"])
        assert tracker.flush(timeout=60)
        stats = tracker.stats()
        tracker.close()
    assert stats.concurrency_limit["us"] == 2
    assert max(seen) <= 2
    assert stats.delivered == 1500


def test_sender_threads_beyond_the_limit_wait_instead_of_spinning() -> None:
    """More sender threads than slots (the limit shrank after the pool grew): the surplus threads
    block until a slot is freed. Spinning there cost the application ~500 GIL hand-overs per request."""
    with Emulator(workspaces={SITE_ID: API_KEY}, faults={"latency": 0.02}) as emulator:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, batch_bytes=2048, flush_interval=0.02,
                          rate_limit=0, max_in_flight=2)
        pipeline = tracker._pipeline
        rounds = [0]
        sender_round = pipeline._sender_round

        def counted_round(turn: int) -> int:
            rounds[0] += 1
            return sender_round(turn)

        pipeline._sender_round = counted_round  # type: ignore[method-assign]
        tracker.track("u", "e", {"i": -1})
        assert tracker.flush(timeout=30)
        for _ in range(6):  # six threads that will never get a slot while the other two deliver
            assert pipeline._senders.add()
        for i in range(3000):
            tracker.track("u", "e", {"i": i, "pad": "y" * 60})
        assert tracker.flush(timeout=60)
        stats = tracker.stats()
        requests = sum(v for k, v in stats.counters.items() if k.startswith("requests_"))
        tracker.close()
    assert stats.delivered == 3001
    assert stats.concurrency_limit["us"] <= 2
    # A round per request and a few per wait timeout; a spinning thread makes thousands a second.
    assert rounds[0] < 10 * requests + 500, (rounds[0], requests)
