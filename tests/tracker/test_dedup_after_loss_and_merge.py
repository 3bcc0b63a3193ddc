"""Dedup never stands between the application and Customer.io's view of a person: what failed for good
can be sent again at once, and a person merged away, deleted or suppressed through any door (the
tracker's methods, a raw operation, the drop-in's ``batch()``) is re-created by an identify equal to
the last one. Against the emulator, over real sockets."""

from __future__ import annotations

from typing import Any

from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError

from conftest import API_KEY, SITE_ID, TrackerFactory

ULID_A = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


def test_what_failed_for_good_is_sent_again_when_the_application_retries(make_tracker: TrackerFactory,
                                                                         emulator: Emulator) -> None:
    errors: list[DeliveryError] = []
    tracker = make_tracker(max_retries=1, on_error=errors.append)
    emulator.set_faults(error_rate=1.0, error_statuses=[503])
    tracker.identify("f", {"plan": "pro"})
    tracker.track("f", "bought", {"total": 1}, id=ULID_A)
    tracker.identify("g", {"plan": "pro"})  # fails too; not sent again below
    assert tracker.flush(timeout=10)
    assert sum(len(e.ops) for e in errors) == 3 and emulator.state()["people"] == {}

    emulator.clear_faults()
    tracker.identify("f", {"plan": "pro"})  # the application's natural retry: same call again
    tracker.track("f", "bought", {"total": 1}, id=ULID_A)
    assert tracker.flush(timeout=10)
    people = emulator.state()["people"]
    assert people["f"]["attributes"] == {"plan": "pro"} and "g" not in people
    counters = tracker.stats().counters
    assert counters["delivered"] == 2 and counters.get("deduped_identify", 0) == 0
    assert counters.get("deduped_event", 0) == 0
    # Delivered now: a repeat is a duplicate again.
    tracker.identify("f", {"plan": "pro"})
    tracker.track("f", "bought", {"total": 1}, id=ULID_A)
    assert tracker.flush(timeout=10)
    counters = tracker.stats().counters
    assert (counters["deduped_identify"], counters["deduped_event"], counters["delivered"]) == (1, 1, 2)


def _exists(emulator: Emulator, person: str) -> bool:
    return person in emulator.state()["people"]


def test_a_person_merged_away_or_deleted_raw_is_re_created_by_the_same_identify(make_tracker: TrackerFactory,
                                                                                emulator: Emulator) -> None:
    tracker = make_tracker()
    tracker.identify("new", {"plan": "pro"})
    tracker.identify("old", {"plan": "basic"})
    tracker.identify("raw", {"x": 1})
    assert tracker.flush(timeout=10)

    tracker.merge_customers("id", "new", "id", "old")
    op: dict[str, Any] = {"type": "person", "identifiers": {"id": "raw"}, "action": "delete"}
    tracker.send_operation(op)
    assert tracker.flush(timeout=10)
    assert not _exists(emulator, "old") and not _exists(emulator, "raw") and _exists(emulator, "new")

    tracker.identify("old", {"plan": "basic"})
    tracker.identify("raw", {"x": 1})
    tracker.identify("new", {"plan": "pro"})  # the merge changed the primary too: sent again
    assert tracker.flush(timeout=10)
    people = emulator.state()["people"]
    assert people["old"]["attributes"] == {"plan": "basic"} and people["raw"]["attributes"] == {"x": 1}
    assert tracker.stats().counters.get("deduped_identify", 0) == 0


def test_the_drop_in_batch_delete_lets_the_person_be_re_created(emulator: Emulator) -> None:
    """The drop-in does not dedup by default (the official client does not); with dedup turned on, its
    raw ``batch()`` delete ends the person's identify key like ``Tracker.delete``."""
    from ciotrack.compat import CustomerIO

    client = CustomerIO(SITE_ID, API_KEY, endpoint=emulator.url, flush_interval=0.02, rate_limit=0, dedup_ttl=300)
    try:
        client.identify("z", plan="pro")
        assert client.flush(timeout=10)
        client.batch([{"type": "person", "identifiers": {"id": "z"}, "action": "delete"}])
        assert client.flush(timeout=10)
        assert not _exists(emulator, "z")
        client.identify("z", plan="pro")
        assert client.flush(timeout=10)
        assert emulator.state()["people"]["z"]["attributes"] == {"plan": "pro"}
    finally:
        client.close(timeout=5)
