"""A 429 storm at the emulator (issue 4): every sender backs off, nothing is lost, the bucket resumes.

The emulator answers every Track API request 429 with ``Retry-After: 1`` for 2 s, in the middle of a
delivery by three senders sharing one token bucket (100 requests/s). Without backing off, three
senders with this test's 10-100 ms backoff would make dozens of requests during the storm, and at the
bucket's rate about 200. Honouring Retry-After (a floor for the retrying sender, a pause of the shared
bucket for the others), each sender can make at most one request per second of storm.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ciotrack.emulator import Emulator

from conftest import TrackerFactory, all_events

SENDERS = 3
STORM_SECONDS = 2.0
RETRY_AFTER = 1


class RequestClock:
    """Stamps each Track API answer of an in-process emulator with ``time.monotonic()`` as it happens.

    Event-driven: ``Emulator.wait_for`` re-evaluates its predicate after every request, so a stamp is
    taken at most one scheduling delay after the request finished (answers that finish together get
    the same stamp, which only makes the spacing checks below stricter)."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self._stop = threading.Event()
        self.storm: list[float] = []  # one stamp per 429 of the storm
        self.ok: list[float] = []  # one stamp per 200
        self._seen = (0, 0)
        self._thread = threading.Thread(target=self._run, name="request-clock", daemon=True)

    def __enter__(self) -> RequestClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> bool:
        now = time.monotonic()
        stats = self._emulator.stats()
        storm, ok = stats["faults"]["storm_429"], int(stats["by_status"].get("200", 0))
        self.storm += [now] * (storm - self._seen[0])
        self.ok += [now] * (ok - self._seen[1])
        self._seen = (storm, ok)
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._emulator.wait_for(self._sample, timeout=60):
            pass


@pytest.fixture
def storm_tracker(make_tracker: TrackerFactory) -> Iterator[Any]:
    # Small batches so that the queue holds many requests' worth; make_tracker's backoff (10 ms base,
    # 100 ms cap) is far shorter than Retry-After, so only honouring the header keeps senders quiet.
    yield make_tracker(senders=SENDERS, rate_limit=100, rate_burst=5, batch_bytes=2048, max_retries=8)


def test_429_storm_every_sender_backs_off_nothing_lost_bucket_resumes(storm_tracker: Any,
                                                                      emulator: Emulator) -> None:
    tracker = storm_tracker
    # 50 ms per request keeps every sender in flight at once (3 / 50 ms = 60 requests/s, under the
    # bucket's 100): when the storm begins, all three are sending, none is idle.
    emulator.set_faults(latency=0.05)
    total = 600  # dozens of 2 KB batches: about 1 s of sending
    with RequestClock(emulator) as clock:
        for i in range(total):
            tracker.track(f"u{i % 40}", "storm", {"i": i})
        # Let delivery get going (every sender busy, the queue far from empty), then storm.
        assert emulator.wait_for(lambda: int(emulator.stats()["by_status"].get("200", 0)) >= 6, timeout=10)
        before = emulator.stats()
        ok_before_storm = int(before["by_status"].get("200", 0))
        assert before["max_in_flight"] == SENDERS
        storm_started = time.monotonic()
        emulator.storm_429(STORM_SECONDS, retry_after=RETRY_AFTER)
        storm_ended = storm_started + STORM_SECONDS
        assert tracker.flush(timeout=30)
        assert emulator.wait_for(lambda: len(clock.ok) + len(clock.storm) >= emulator.stats()["requests"], 5)

    stats = emulator.stats()
    storm_429s = stats["faults"]["storm_429"]
    # Backed off: at most one request per sender per Retry-After of storm (plus the wave under way
    # when it began), where hammering senders would have made dozens. Usually it is fewer than one
    # per sender: the first 429 pauses the shared bucket, and the others never get a token.
    bound = SENDERS * (math.ceil(STORM_SECONDS / RETRY_AFTER) + 1)
    assert 2 <= storm_429s <= bound, f"{storm_429s} requests met the storm (bound {bound})"
    assert len(clock.storm) == storm_429s
    # ... and spaced: no sender made two requests within Retry-After, so any half-second window
    # holds at most one 429 per sender.
    for first in clock.storm:
        in_window = sum(1 for t in clock.storm if first <= t < first + 0.5)
        assert in_window <= SENDERS, [round(t - storm_started, 3) for t in clock.storm]
    assert all(t >= storm_started for t in clock.storm)
    assert stats["by_status"].get("429", 0) == storm_429s  # no other 429 (the emulator has no limit here)

    # Nothing lost, nothing twice: the storm refused before applying, and retries reuse the same ids.
    events = all_events(emulator.state())
    assert sorted(e["data"]["i"] for e in events) == list(range(total))
    assert len({e["id"] for e in events}) == total and stats["duplicates"] == 0
    counters = tracker.stats().counters
    assert counters["delivered"] == total and counters.get("failed", 0) == 0
    assert counters["requests_429"] == storm_429s and counters["retried"] == storm_429s

    # The bucket resumed: no request got through during the storm (those in flight when it began may
    # finish just after; stamps lag a little), and the rest of the queue went out once it ended.
    assert not any(storm_started + 0.3 < t < storm_ended for t in clock.ok), "a 200 inside the storm"
    after = [t for t in clock.ok if t >= storm_ended]
    assert len(after) >= 1 and len(clock.ok) > ok_before_storm
