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


def test_a_batch_that_keeps_failing_on_replay_goes_to_a_dead_letter_file(
        recorder: RecordingServer, tmp_path: pathlib.Path) -> None:
    posts: list[str] = []

    def respond(rec: Recorded) -> tuple[int, dict[str, str], bytes]:
        if rec.method != "POST":
            return 200, {}, b"{}"  # the health probe: the API is up
        names = [op["name"] for op in json.loads(rec.body)["batch"]]
        posts.extend(names)
        return (500, {}, b"{}") if "poison" in names else (200, {}, b"{}")

    recorder.responder = respond
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
