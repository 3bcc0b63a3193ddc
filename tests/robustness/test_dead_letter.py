"""A poison batch in the spool, over a real receiver and real files: replayed a bounded number of
times, then set aside in a ``*.dead`` file (kept, never replayed), counted and reported; the healthy
operations around it are delivered."""

from __future__ import annotations

import json
import pathlib
import time

from ciotrack import Tracker
from ciotrack.spool import Spool, spool_directory
from ciotrack.spool.dead_letter import MAX_REPLAYS

from conftest import API_KEY, SITE_ID, Recorded, RecordingServer


def _poison_refused(recorder: RecordingServer) -> list[str]:
    """The receiver answers 500 to any batch holding an event named ``poison``, 200 to the rest (and to
    the health probe: the API is up); returns the list of the event names POSTed, as they arrive."""
    posts: list[str] = []

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if rec.method != "POST":
            return 200, {}, b"{}"
        names = [op["name"] for op in json.loads(rec.body)["batch"]]
        posts.extend(names)
        return (500, {}, b"{}") if "poison" in names else (200, {}, b"{}")

    recorder.responder = respond
    return posts


def test_a_batch_that_keeps_failing_on_replay_goes_to_a_dead_letter_file(
        recorder: RecordingServer, tmp_path: pathlib.Path) -> None:
    posts = _poison_refused(recorder)
    drops: list[tuple[str, int]] = []
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, spool_dir=str(tmp_path), rate_limit=0,
                      flush_interval=0.02, max_retries=0, backoff_base=0.01,
                      on_drop=lambda reason, n: drops.append((reason, n)))
    tracker.track("user-0", "poison")
    directory = spool_directory(tmp_path, SITE_ID)
    deadline = time.monotonic() + 90
    while not list(directory.glob("*.dead")) and time.monotonic() < deadline:
        time.sleep(0.05)
    [dead] = list(directory.glob("*.dead"))
    assert drops == [("dead_letter", 1)]
    assert tracker.stats().counters["dropped_dead_letter"] == 1
    assert posts.count("poison") == MAX_REPLAYS + 1  # the first try, then each replay: bounded
    # The healthy traffic flows (spooled while the poison had the API marked down, then replayed
    # once a probe finds it up), and the dead letter is never replayed.
    tracker.track("user-1", "healthy")
    deadline = time.monotonic() + 60
    while "healthy" not in posts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.flush(timeout=10)
    assert tracker.close(timeout=5)
    assert posts.count("poison") == MAX_REPLAYS + 1 and posts[-1] == "healthy"
    # Kept for inspection, in the spool's record format.
    spool = Spool(directory)
    try:
        assert list(spool.claim()) == []  # not a segment: nothing left to replay
    finally:
        spool.close()
    raw = dead.read_bytes()
    assert b'"name":"poison"' in raw


def test_a_dead_lettered_event_is_no_duplicate_when_the_application_sends_it_again(
        recorder: RecordingServer, tmp_path: pathlib.Path) -> None:
    # The event carries the application's own id, so dedup (by id, 300 s) would drop a second send of it
    # as a duplicate of an event Customer.io never accepted: a dead letter is a loss, and is forgotten.
    posts = _poison_refused(recorder)
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, spool_dir=str(tmp_path), rate_limit=0,
                      flush_interval=0.02, max_retries=0, backoff_base=0.01)
    event_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    tracker.track("user-0", "poison", id=event_id)
    directory = spool_directory(tmp_path, SITE_ID)
    deadline = time.monotonic() + 90
    while not list(directory.glob("*.dead")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(directory.glob("*.dead")) and posts.count("poison") == MAX_REPLAYS + 1
    recorder.responder = lambda rec: (200, {}, b"{}")  # the receiver takes it now
    tracker.track("user-0", "poison", id=event_id)  # spooled while the API is marked down, then replayed
    deadline = time.monotonic() + 60
    while tracker.stats().counters.get("delivered", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.close(timeout=5)
    assert [op.get("id") for op in recorder.ops()].count(event_id) == MAX_REPLAYS + 2  # sent once more
    assert tracker.stats().counters.get("deduped_event", 0) == 0


def test_operations_handed_back_untried_after_a_failed_replay_never_age_into_dead_letters(
        recorder: RecordingServer, tmp_path: pathlib.Path) -> None:
    # Each replay round sends the poison batch first; it runs out of retries, the destination is
    # then known down, and the rest of the round goes back to the spool without a request. Those
    # operations were never tried: only the poison may become a dead letter, however many rounds.
    posts = _poison_refused(recorder)
    drops: list[tuple[str, int]] = []
    # One sender, and a poison big enough to fill a batch on its own: it is always sent first, alone.
    tracker = Tracker(SITE_ID, API_KEY, endpoint=recorder.url, spool_dir=str(tmp_path), rate_limit=0,
                      flush_interval=0.02, max_retries=0, backoff_base=0.01, senders=1, batch_bytes=1024,
                      on_drop=lambda reason, n: drops.append((reason, n)))
    tracker.track("user-0", "poison", {"pad": "x" * 700})
    for i in range(30):
        tracker.track(f"user-{i}", "healthy", {"i": i})
    directory = spool_directory(tmp_path, SITE_ID)
    deadline = time.monotonic() + 90
    while posts.count("healthy") < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.flush(timeout=10)
    assert tracker.close(timeout=5)
    assert drops == [("dead_letter", 1)]
    assert posts.count("poison") == MAX_REPLAYS + 1
    assert posts.count("healthy") == 30  # each sent once: never tried while the poison failed first
    [dead] = list(directory.glob("*.dead"))
    assert b'"name":"poison"' in dead.read_bytes() and b'"healthy"' not in dead.read_bytes()
