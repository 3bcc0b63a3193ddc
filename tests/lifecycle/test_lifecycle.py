"""Lifecycle over real processes: delivery at interpreter exit, bounded exit, fork, garbage collection."""

from __future__ import annotations

import gc
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import weakref

from ciotrack.emulator import Emulator
from ciotrack.errors import DeliveryError
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory, all_events


def _run(script: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_process_exiting_without_flush_delivers_everything(emulator: Emulator) -> None:
    result = _run(f"""
        import ciotrack
        tracker = ciotrack.Tracker({SITE_ID!r}, {API_KEY!r}, endpoint={emulator.url!r}, flush_interval=1.0)
        for i in range(20000):
            tracker.track(f"exit-{{i % 100}}", "bye", {{"i": i}})
        print("queued", flush=True)
        # no flush(), no close(): the interpreter exits here
    """)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no traceback, no "can't create new thread at interpreter shutdown"
    events = all_events(emulator.state())
    assert sorted(e["data"]["i"] for e in events) == list(range(20000))


def test_module_level_tracker_is_delivered_at_exit(emulator: Emulator) -> None:
    result = _run(f"""
        import ciotrack
        ciotrack.init({SITE_ID!r}, {API_KEY!r}, endpoint={emulator.url!r}, flush_interval=5.0)
        for i in range(500):
            ciotrack.track("mod", "bye", {{"i": i}})
    """)
    assert result.returncode == 0, result.stderr
    assert len(emulator.state()["people"]["mod"]["events"]) == 500


def test_exit_delivers_on_the_exiting_thread_when_no_thread_can_start(emulator: Emulator) -> None:
    # Python 3.12+ refuses new threads during shutdown; simulate it for every thread start so the
    # senders never run, and the exit hook must deliver inline.
    result = _run(f"""
        import threading
        def refuse(self):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        threading.Thread.start = refuse
        import ciotrack
        tracker = ciotrack.Tracker({SITE_ID!r}, {API_KEY!r}, endpoint={emulator.url!r})
        for i in range(3000):
            tracker.track("inline", "bye", {{"i": i}})
    """)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert len(emulator.state()["people"]["inline"]["events"]) == 3000


def test_sync_mode_delivers_at_exit(emulator: Emulator) -> None:
    result = _run(f"""
        import ciotrack
        tracker = ciotrack.Tracker({SITE_ID!r}, {API_KEY!r}, endpoint={emulator.url!r}, sync=True)
        for i in range(1000):
            tracker.track("sync-exit", "bye", {{"i": i}})
    """)
    assert result.returncode == 0, result.stderr
    assert len(emulator.state()["people"]["sync-exit"]["events"]) == 1000


def test_exit_is_bounded_when_the_server_stalls(emulator: Emulator) -> None:
    emulator.set_faults(slow_read=30.0)
    started = time.monotonic()
    result = _run(f"""
        import ciotrack
        tracker = ciotrack.Tracker({SITE_ID!r}, {API_KEY!r}, endpoint={emulator.url!r}, exit_timeout=1.0,
                                   timeout=(1.0, 20.0))
        for i in range(100):
            tracker.track("stalled", "bye", {{"i": i}})
    """, timeout=25)
    elapsed = time.monotonic() - started
    emulator.clear_faults()
    assert result.returncode == 0, result.stderr
    # A hang would take the 20 s read timeout (or forever); exit_timeout is 1 s. Generous bound for a
    # noisy machine: this is a "never hangs" check, not a speed claim.
    assert elapsed < 12


def test_close_never_hangs_with_a_stalled_server(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    emulator.set_faults(slow_read=30.0)
    drops: list[tuple[str, int]] = []
    tracker = make_tracker(timeout=(1.0, 20.0), on_drop=lambda r, n: drops.append((r, n)),
                           on_error=lambda e: None)
    for i in range(10):
        tracker.track("stalled", "x", {"i": i})
    started = time.monotonic()
    assert tracker.close(timeout=0.5) is False
    assert time.monotonic() - started < 5  # bounded by the close timeout (+ join slack), not the 20 s read
    emulator.clear_faults()


def test_close_keeps_its_deadline_with_many_senders_stuck_in_requests(make_tracker: TrackerFactory,
                                                                     emulator: Emulator,
                                                                     tmp_path: pathlib.Path) -> None:
    emulator.set_faults(latency=30.0)
    tracker = make_tracker(spool_dir=tmp_path, senders=64, batch_bytes=1024, flush_interval=0.01)
    for i in range(600):
        tracker.track(f"stuck-{i}", "x", {"i": i, "pad": "x" * 200})
    waited = time.monotonic() + 30
    while tracker.stats().in_flight < 64 and time.monotonic() < waited:
        time.sleep(0.02)
    assert tracker.stats().in_flight >= 64  # every sender is inside a 30 s request
    started = time.monotonic()
    tracker.close(timeout=0.2)
    # Returned by its deadline: nothing but a clock can say so. The margin is wide, for a loaded CI
    # machine (the bug overran by at least 0.05 s per stuck sender: 3.2 s and more here); nothing was
    # lost: every batch was spooled.
    assert time.monotonic() - started < 2.5
    assert tracker.stats().spooled == 600
    emulator.clear_faults()

def test_fork_child_delivers_its_own_events_and_not_the_parents(make_tracker: TrackerFactory,
                                                                 emulator: Emulator) -> None:
    tracker = make_tracker(flush_interval=5.0)
    tracker.track("parent", "before-fork")  # queued, not sent: the long linger holds it
    assert tracker.stats()["gauges"]["lane0_ops"] == 1

    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            for i in range(50):
                tracker.track("child", "in-child", {"i": i})
            code = 0 if tracker.flush(timeout=10) else 2
            tracker.close(timeout=5)
        finally:
            os._exit(code)
    tracker.track("parent", "after-fork")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tracker.flush(timeout=10)

    state = emulator.state()
    assert [e["name"] for e in state["people"]["parent"]["events"]] == ["before-fork", "after-fork"]
    assert sorted(e["data"]["i"] for e in state["people"]["child"]["events"]) == list(range(50))
    assert emulator.stats()["duplicates"] == 0
    child_ids = {e["id"] for e in state["people"]["child"]["events"]}
    assert len(child_ids) == 50


def test_fork_with_sender_threads_running(make_tracker: TrackerFactory, emulator: Emulator) -> None:
    tracker = make_tracker(senders=2)
    for i in range(200):
        tracker.track("p", "busy", {"i": i})
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            tracker.track("c", "from-child")
            code = 0 if tracker.flush(timeout=10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tracker.flush(timeout=10)
    state = emulator.state()
    assert sorted(e["data"]["i"] for e in state["people"]["p"]["events"]) == list(range(200))
    assert [e["name"] for e in state["people"]["c"]["events"]] == ["from-child"]


def test_tracker_is_garbage_collected_and_its_queue_still_delivered(emulator: Emulator) -> None:
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, flush_interval=0.5)
    for i in range(100):
        tracker.track("gc", "collected", {"i": i})
    ref = weakref.ref(tracker)
    del tracker
    gc.collect()
    assert ref() is None
    assert emulator.wait_events(100, timeout=10)


def _sync_tracker_with_a_parked_batch(emulator: Emulator, spool_dir: str | None,
                                      drops: list[tuple[str, int]], errors: list[DeliveryError]) -> None:
    """A sync tracker whose flush(timeout) ran out while its batch waited for a retry (parked in
    flight, not in the lane), then collected."""
    emulator.set_faults(error_rate=1.0, error_statuses=[503])
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, sync=True, spool_dir=spool_dir, rate_limit=0,
                      backoff_base=30, backoff_cap=30, on_drop=lambda reason, n: drops.append((reason, n)),
                      on_error=errors.append)
    for i in range(10):
        tracker.track("gc-user", "parked", {"i": i})
    assert not tracker.flush(timeout=0.3)  # a 503, then a retry delay far past the deadline
    pipeline = tracker._pipeline
    assert [job.batch.count for route in pipeline.routes for job in route.parked] == [10]
    del tracker, pipeline
    gc.collect()
    emulator.set_faults()


def test_a_collected_sync_tracker_spools_its_parked_batch(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    drops: list[tuple[str, int]] = []
    errors: list[DeliveryError] = []
    _sync_tracker_with_a_parked_batch(emulator, str(tmp_path), drops, errors)
    assert (drops, errors) == ([], [])
    replayer = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, sync=True, spool_dir=str(tmp_path), rate_limit=0)
    assert replayer.flush(timeout=20)
    replayer.close(timeout=10)
    assert sorted(e["data"]["i"] for e in all_events(emulator.state())) == list(range(10))


def test_a_collected_sync_tracker_without_a_spool_reports_its_parked_batch(emulator: Emulator) -> None:
    drops: list[tuple[str, int]] = []
    errors: list[DeliveryError] = []
    _sync_tracker_with_a_parked_batch(emulator, None, drops, errors)
    assert drops == [] and [len(e.ops) for e in errors] == [10]
    assert all_events(emulator.state()) == []
