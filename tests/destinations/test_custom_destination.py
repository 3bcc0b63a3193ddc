"""A destination written in the test file, injected with ``Tracker(destination=...)``: the public seam.

The tracker's real sender threads, retry policy, ledger and spool drive an object the user wrote;
its ``Outcome`` answers decide retries, rejections and health.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from ciotrack.destinations import Outcome, time_left
from ciotrack.destinations.capture import Capture
from ciotrack.errors import ConfigError, DeliveryError
from ciotrack.tracker import Tracker


class FlakyInbox:
    """Keeps what it accepts. The first ``refusals`` sends of each body answer "retry" (503, with a
    Retry-After of 50 ms); while ``down``, every send gets no answer and ``probe()`` says False."""

    def __init__(self, name: str = "inbox", refusals: int = 2) -> None:
        self.name = name
        self.refusals = refusals
        self.down = False
        self.closed = False
        self.probes = 0
        self.ops: list[dict[str, Any]] = []
        self.tries: Counter[bytes] = Counter()
        self.sent_at: defaultdict[bytes, list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def send(self, body: bytes) -> Outcome:
        with self._lock:
            if self.down:
                return Outcome.retry(reason="connection_error: inbox down")
            self.tries[body] += 1
            self.sent_at[body].append(time.monotonic())
            if self.tries[body] <= self.refusals:
                return Outcome.retry(503, retry_after=0.05)
            self.ops.extend(json.loads(body)["batch"])
        return Outcome.delivered()

    def probe(self) -> bool:
        self.probes += 1
        return not self.down

    def close(self) -> None:
        self.closed = True


def test_every_operation_arrives_exactly_once_with_retries_driven_by_the_destination() -> None:
    inbox = FlakyInbox()
    # No site_id/api_key: an injected destination needs no Customer.io credentials.
    tracker = Tracker(destination=inbox, senders=2, batch_bytes=2048, flush_interval=0.01, rate_limit=0,
                      backoff_base=0.001, backoff_cap=0.01)
    for i in range(300):
        tracker.track(f"u{i % 7}", "ordered", {"i": i})
    assert tracker.flush(timeout=30)
    stats = tracker.stats()
    tracker.close(timeout=5)

    assert sorted(op["attributes"]["i"] for op in inbox.ops) == list(range(300))  # each once, none lost
    bodies = len(inbox.tries)
    assert bodies >= 5 and set(inbox.tries.values()) == {3}  # the same bytes, twice refused, then accepted
    for times in inbox.sent_at.values():
        # Retry-After is a floor under the (here ~1 ms) backoff.
        assert all(later - earlier >= 0.05 for earlier, later in zip(times, times[1:], strict=False))
    assert stats.delivered == 300 and stats.failed_total == 0 and stats.dropped_total == 0
    assert stats.retried == 2 * bodies and stats.requests == {"503": 2 * bodies, "200": bodies}
    assert inbox.closed  # close() closes the destinations


class TypeNotingInbox:
    """Notes the type of every body it is given, and keeps a copy of the bytes."""

    name = "inbox"

    def __init__(self) -> None:
        self.types: set[type] = set()
        self.ops: list[dict[str, Any]] = []

    def send(self, body: Any) -> Outcome:
        self.types.add(type(body))
        self.ops.extend(json.loads(bytes(body))["batch"])
        return Outcome.delivered()

    def probe(self) -> bool:
        return True

    def close(self) -> None:
        pass


class ViewTakingInbox(TypeNotingInbox):
    accepts_buffers = True


@pytest.mark.parametrize("inbox_type, expected", [(TypeNotingInbox, bytes), (ViewTakingInbox, memoryview)])
def test_a_destination_gets_bytes_unless_it_says_it_accepts_buffers(inbox_type: type, expected: type) -> None:
    inbox = inbox_type()
    tracker = Tracker(destination=inbox, batch_bytes=4096, flush_interval=0.01, rate_limit=0)
    for i in range(200):
        tracker.track(f"u{i}", "viewed", {"i": i})
    assert tracker.flush(timeout=30)
    stats = tracker.stats()
    tracker.close(timeout=5)
    assert inbox.types == {expected}
    assert sorted(op["attributes"]["i"] for op in inbox.ops) == list(range(200))
    assert stats.delivered == 200


def test_a_factory_gets_one_destination_per_region() -> None:
    made: dict[str, FlakyInbox] = {}

    def factory(region: str) -> FlakyInbox:
        made[region] = FlakyInbox(region, refusals=0)
        return made[region]

    with Tracker(destination=factory, regions=("us", "eu"), sync=True) as tracker:
        tracker.track("1", "here")
        tracker.track("2", "there", region="eu")
        assert tracker.flush(timeout=5)
    assert set(made) == {"us", "eu"}
    assert [op["name"] for op in made["us"].ops] == ["here"] and [op["name"] for op in made["eu"].ops] == ["there"]


def test_rejections_and_final_answers_reach_on_error_under_the_destinations_code() -> None:
    class Strict:
        name = "strict"

        def send(self, body: bytes) -> Outcome:
            ops = json.loads(body)["batch"]
            if any(op["name"] == "forbidden" for op in ops):
                return Outcome.final(403, "http_403: not allowed here")
            return Outcome.partial((i, "invalid: name: too short") for i, op in enumerate(ops) if len(op["name"]) < 3)

        def probe(self) -> bool:
            return True

        def close(self) -> None:
            pass

    errors: list[DeliveryError] = []
    with Tracker(destination=Strict(), sync=True, on_error=errors.append) as tracker:
        tracker.track("1", "ok-event")
        tracker.track("2", "no")
        assert tracker.flush(timeout=5)
        tracker.track("3", "forbidden")
        assert tracker.flush(timeout=5)
        stats = tracker.stats()
    assert [(e.status, e.reason, [json.loads(op)["name"] for op in e.ops]) for e in errors] == [
        (207, "invalid: name: too short", ["no"]), (403, "http_403: not allowed here", ["forbidden"])]
    assert stats.delivered == 1 and stats.failed == {"invalid": 1, "http_403": 1}


def test_a_capture_is_a_destination_factory() -> None:
    capture = Capture()
    with Tracker(destination=capture, region="auto", sync=True) as tracker:  # "auto": nothing looked up
        tracker.identify("7", plan="pro")
        assert tracker.flush(timeout=5)
    assert [(region, op["action"], op["attributes"]) for region, op in capture.snapshot()] == [
        ("auto", "identify", {"plan": "pro"})]


def test_the_spool_replays_once_the_destinations_probe_says_it_is_back(tmp_path: pathlib.Path) -> None:
    inbox = FlakyInbox(refusals=0)
    inbox.down = True
    tracker = Tracker(destination=inbox, spool_dir=tmp_path, flush_interval=0.01, rate_limit=0, max_retries=1,
                      backoff_base=0.001, retry_budget=0.05)
    for i in range(20):
        tracker.track("s", "outage", {"i": i})
    assert tracker.flush(timeout=10)
    assert tracker.stats().spooled == 20 and inbox.ops == []  # no answer: handed to the disk, not lost
    inbox.down = False
    deadline = time.monotonic() + 15
    while len(inbox.ops) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    tracker.close(timeout=5)
    assert sorted(op["attributes"]["i"] for op in inbox.ops) == list(range(20))
    assert inbox.probes >= 1  # health came back through destination.probe(), not a hand-built request
    assert tracker.stats().replayed == 20


def test_an_object_that_is_neither_a_destination_nor_a_factory_is_refused() -> None:
    class SendOnly:  # no probe(), close() or name: not a Destination, and not callable
        def send(self, body: bytes) -> Outcome:
            return Outcome.delivered()

    with pytest.raises(ConfigError, match="destination must be a Destination"):
        Tracker(destination=SendOnly())


def test_a_destination_reads_the_callers_deadline_with_time_left() -> None:
    class Slow:
        """Makes its own (here: simulated) request, capped by the time the caller has left."""

        name = "slow"

        def __init__(self) -> None:
            self.seen: list[float | None] = []

        def send(self, body: bytes) -> Outcome:
            left = time_left()
            self.seen.append(left)
            time.sleep(min(30.0, left if left is not None else 30.0))
            return Outcome.retry(None, reason="timeout")

        def probe(self) -> bool:
            return True

        def close(self) -> None:
            pass

    slow = Slow()
    tracker = Tracker(destination=slow, sync=True)
    tracker.track("1", "deadline")
    started = time.monotonic()
    assert tracker.flush(timeout=0.5) is False
    assert time.monotonic() - started < 10  # the destination kept the caller's 0.5 s, not its own 30 s
    assert slow.seen and all(left is not None and left <= 0.5 for left in slow.seen)
    assert tracker.stats().in_flight == 1  # cut short and parked, not lost
    tracker.close(timeout=0.2)
    assert time_left() is None  # outside a deadline (here, as on a sender thread)
