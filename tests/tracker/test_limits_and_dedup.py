"""Dedup rules of issue 4, observed where they matter: on the wire, at the emulator.

Each test drives a real Tracker (sender thread, HTTP, the emulator on 127.0.0.1) and reads back what
was actually delivered: the bodies of the emulator's request log, in the order they were answered.
With one sender, that order is the queue's FIFO order, i.e. the order the core accepted the calls.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from ciotrack.emulator import Emulator
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory, all_events

ULID_A = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
ULID_B = "01BX5ZZKBKACTAV9WEVGEMMVRZ"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    # Overrides conftest's: a request log long enough to hold every batch a test sends.
    with Emulator(workspaces={SITE_ID: API_KEY}, request_log=10_000) as em:
        yield em


def delivered(emulator: Emulator) -> list[dict[str, Any]]:
    """Every operation the emulator accepted, in delivery order."""
    ops: list[dict[str, Any]] = []
    for request in emulator.requests():
        if request["path"] == "/api/v2/batch" and request["status"] == 200:
            ops.extend(json.loads(request["body"])["batch"])
    return ops


def identifies(ops: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(op["identifiers"]["id"], op["attributes"]) for op in ops if op["action"] == "identify"]


def counters(tracker: Tracker) -> Mapping[str, int]:
    return tracker.stats().counters


def test_identify_and_composite_event_windows_expire_after_the_ttl(make_tracker: TrackerFactory,
                                                                   emulator: Emulator) -> None:
    ttl = 0.6
    tracker = make_tracker(dedup_ttl=ttl, dedup_events="composite")
    started = time.monotonic()
    tracker.identify("u1", {"plan": "a"})
    tracker.track("u1", "viewed", {"sku": 1})
    tracker.identify("u1", {"plan": "a"})  # same attributes, inside the window: skipped
    tracker.track("u1", "viewed", {"sku": 1})  # same customer+name+data, inside the window: skipped
    inside = time.monotonic() - started
    assert tracker.flush(timeout=5)
    assert inside < ttl, f"the machine stalled {inside:.2f} s between two calls; the window test is void"
    assert counters(tracker)["deduped_identify"] == 1 and counters(tracker)["deduped_event"] == 1

    # The window is measured on the core's monotonic clock: let it pass (time, not synchronisation).
    time.sleep(max(0.0, started + ttl + 0.05 - time.monotonic()))
    tracker.identify("u1", {"plan": "a"})
    tracker.track("u1", "viewed", {"sku": 1})
    tracker.identify("u1", {"plan": "a"})  # a fresh window started with the re-sent one
    assert tracker.flush(timeout=5)

    ops = delivered(emulator)
    assert identifies(ops) == [("u1", {"plan": "a"}), ("u1", {"plan": "a"})]
    assert [op["name"] for op in ops if op["action"] == "event"] == ["viewed", "viewed"]
    stats = counters(tracker)
    assert stats["deduped_identify"] == 2 and stats["deduped_event"] == 1
    assert stats["delivered"] == 4 == stats["accepted"]
    assert [e["name"] for e in emulator.state()["people"]["u1"]["events"]] == ["viewed", "viewed"]


def test_a_to_b_to_a_sends_each_change_and_skips_only_repeats(make_tracker: TrackerFactory,
                                                              emulator: Emulator) -> None:
    tracker = make_tracker()
    a, b = {"plan": "a", "seats": 1}, {"plan": "b", "seats": 1}
    for attributes in (a, b, a, a, b, dict(b)):
        tracker.identify("u1", attributes)
    tracker.identify("u2", a)  # another person with the same attributes is not a repeat
    assert tracker.flush(timeout=5)
    assert identifies(delivered(emulator)) == [("u1", a), ("u1", b), ("u1", a), ("u1", b), ("u2", a)]
    assert counters(tracker)["deduped_identify"] == 2
    people = emulator.state()["people"]
    assert people["u1"]["attributes"]["plan"] == "b" and people["u2"]["attributes"]["plan"] == "a"


def test_event_id_dedup_sends_an_id_once(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker()
    tracker.track("u1", "paid", {"total": 10}, id=ULID_A)
    tracker.track("u1", "paid", {"total": 10}, id=ULID_A)  # an app retrying its own call
    tracker.track("u2", "other", None, id=ULID_A.lower())  # the id decides, in any case; nothing else
    tracker.track("u1", "paid", {"total": 10}, id=ULID_B)
    tracker.track("u1", "paid", {"total": 10})  # fresh ids: identical events both go
    tracker.track("u1", "paid", {"total": 10})
    assert tracker.flush(timeout=5)
    ids = [op["id"] for op in delivered(emulator) if op["action"] == "event"]
    assert ids[:2] == [ULID_A, ULID_B] and len(ids) == 4 and len(set(ids)) == 4
    assert counters(tracker)["deduped_event"] == 2
    assert emulator.stats()["duplicates"] == 0  # the server never had to drop a repeat itself
    assert sorted(e["id"] for e in all_events(emulator.state())) == sorted(ids)


def test_composite_dedup_keys_on_customer_action_name_and_data(make_tracker: TrackerFactory,
                                                               emulator: Emulator) -> None:
    tracker = make_tracker(dedup_events="composite")
    data = {"sku": 1, "tags": ["x"]}
    tracker.track("u1", "viewed", data)
    tracker.track("u1", "viewed", {"sku": 1, "tags": ["x"]})  # equal data: skipped
    tracker.track("u1", "viewed", data, id=ULID_A)  # a caller's id does not make it another event
    # Data is compared as encoded, so another key order is another event: the rule errs towards
    # sending (a missed skip costs one request; a wrong skip would lose an event).
    tracker.track("u1", "viewed", {"tags": ["x"], "sku": 1})
    tracker.track("u1", "viewed", {"sku": 2, "tags": ["x"]})
    tracker.track("u2", "viewed", data)
    tracker.page("u1", "viewed", data)
    tracker.track_anonymous("u1", "viewed", data)
    tracker.track("u1", "bought", data)
    tracker.track("u1", "viewed")  # no data is not empty-dict data of another event; sent once
    tracker.track("u1", "viewed")
    assert tracker.flush(timeout=5)
    events = [(op["identifiers"].get("id"), op["identifiers"].get("anonymous_id"), op["action"], op["name"],
               op.get("attributes")) for op in delivered(emulator)]
    assert events == [
        ("u1", None, "event", "viewed", {"sku": 1, "tags": ["x"]}),
        ("u1", None, "event", "viewed", {"tags": ["x"], "sku": 1}),
        ("u1", None, "event", "viewed", {"sku": 2, "tags": ["x"]}),
        ("u2", None, "event", "viewed", {"sku": 1, "tags": ["x"]}),
        ("u1", None, "page", "viewed", {"sku": 1, "tags": ["x"]}),
        (None, "u1", "event", "viewed", {"sku": 1, "tags": ["x"]}),
        ("u1", None, "event", "bought", {"sku": 1, "tags": ["x"]}),
        ("u1", None, "event", "viewed", None),
    ]
    assert counters(tracker)["deduped_event"] == 3
    assert len(emulator.state()["people"]["u1"]["events"]) == 6


def test_eviction_under_the_entry_cap_forgets_the_oldest_first(make_tracker: TrackerFactory,
                                                               emulator: Emulator) -> None:
    tracker = make_tracker(dedup_max_entries=4)
    people = [f"u{i}" for i in range(10)]
    for person in people:
        tracker.identify(person, {"plan": "a"})
    # Only the 4 most recent entries (u6..u9) can be held. Check those first, newest first, so the
    # skipped calls (which record nothing) cannot evict each other; then the evicted ones go again.
    for person in reversed(people):
        tracker.identify(person, {"plan": "a"})
    assert tracker.flush(timeout=5)
    sent = [person for person, _ in identifies(delivered(emulator))]
    assert sent == people + ["u5", "u4", "u3", "u2", "u1", "u0"]
    assert counters(tracker)["deduped_identify"] == 4


def test_concurrent_callers_identifying_the_same_people(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker()  # one sender: delivery order is the order the core accepted the calls
    threads_n, people = 8, [f"p{i}" for i in range(100)]

    def run_threads(rounds: int, attributes_of: Any) -> int:
        barrier = threading.Barrier(threads_n)
        errors: list[BaseException] = []

        def caller(t: int) -> None:
            try:
                barrier.wait(timeout=10)
                for r in range(rounds):
                    for n, person in enumerate(people):
                        tracker.identify(person, attributes_of(t, r, n))
            except BaseException as exc:  # surfaced below: a thread's failure must fail the test
                errors.append(exc)

        workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads_n)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert not errors and not any(w.is_alive() for w in workers)
        return threads_n * rounds * len(people)

    # Phase 1: every thread sends identical attributes for each person, 5 times over.
    before = counters(tracker)
    calls = run_threads(5, lambda t, r, n: {"plan": "gold", "seat": n})
    assert tracker.flush(timeout=10)
    after = counters(tracker)
    accepted = after["accepted"] - before.get("accepted", 0)
    skipped = after["deduped_identify"] - before.get("deduped_identify", 0)
    assert accepted + skipped == calls
    assert len(identifies(delivered(emulator))) == accepted
    if getattr(sys, "_is_gil_enabled", lambda: True)():
        # Each core call holds the GIL from its dedup check to its record: exactly one per person.
        assert accepted == len(people)
    else:
        assert len(people) <= accepted <= threads_n * len(people)

    # Phase 2: the threads disagree (gold/silver by thread and round), so changes interleave.
    sent_before = len(identifies(delivered(emulator)))
    before = after
    calls = run_threads(6, lambda t, r, n: {"plan": "gold" if (t + r) % 2 == 0 else "silver", "seat": n})
    assert tracker.flush(timeout=10)
    after = counters(tracker)
    accepted = after["accepted"] - before["accepted"]
    skipped = after["deduped_identify"] - before["deduped_identify"]
    sent = identifies(delivered(emulator))
    assert accepted + skipped == calls
    assert len(sent) - sent_before == accepted
    assert after["delivered"] == after["accepted"]

    # What was sent obeys the rule per person: every identify differs from the one before it.
    last: dict[str, dict[str, Any]] = {}
    changes_in_phase_2: dict[str, int] = dict.fromkeys(people, 0)
    for index, (person, attributes) in enumerate(sent):
        assert last.get(person) != attributes, f"{person}: identical identify sent twice in a row"
        last[person] = attributes
        if index >= sent_before:
            changes_in_phase_2[person] += 1
    assert all(count >= 1 for count in changes_in_phase_2.values())  # silver always followed gold once
    # And the emulator's view of each person is the last identify sent for them.
    state = emulator.state()["people"]
    assert {p: state[p]["attributes"] for p in people} == last
