"""Fork safety over real processes: multiprocessing (fork start method: Process and Pool), a fork that
skips Python's at-fork hooks (as uWSGI can), a fork with a spool, and real gunicorn --preload -w 4
serving real HTTP requests. Every child's events must reach the emulator exactly once."""

from __future__ import annotations

import atexit
import ctypes
import json
import multiprocessing
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests

from ciotrack.emulator import Emulator
from ciotrack.spool import Spool, spool_directory
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory, all_events, free_port

APPS = pathlib.Path(__file__).parent / "apps"
_fork = multiprocessing.get_context("fork")
_pool_tracker: list[Tracker] = []  # the Pool workers' tracker, inherited through fork


def events_by_person(emulator: Emulator) -> dict[str, list[dict[str, Any]]]:
    return {pid: person["events"] for pid, person in emulator.state()["people"].items()}


def _produce(tracker: Tracker, child: int, count: int) -> None:
    for i in range(count):
        tracker.track(f"mp-{child}", "child", {"i": i})
    # No flush(), no close(): a multiprocessing child ends in os._exit, so ciotrack's own hook must deliver.


def test_multiprocessing_fork_children_each_deliver_their_events_once(make_tracker: TrackerFactory,
                                                                      emulator: Emulator) -> None:
    tracker = make_tracker(flush_interval=5.0)  # the parent's events are still queued at fork time
    for i in range(10):
        tracker.track("parent", "before-fork", {"i": i})
    children = [_fork.Process(target=_produce, args=(tracker, n, 500)) for n in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    tracker.track("parent", "after-fork")
    assert tracker.flush(timeout=10)
    people = events_by_person(emulator)
    for n in range(4):
        assert sorted(e["data"]["i"] for e in people[f"mp-{n}"]) == list(range(500))
    assert Counter(e["name"] for e in people["parent"]) == {"before-fork": 10, "after-fork": 1}
    assert emulator.stats()["duplicates"] == 0


def _pool_task(n: int) -> int:
    _pool_tracker[0].track(f"pool-{n % 5}", "task", {"n": n})
    time.sleep(0.002)  # a task takes a moment, so the pool spreads them (one fast worker could take all)
    return os.getpid()


def test_multiprocessing_fork_pool_workers_deliver_every_task_event(make_tracker: TrackerFactory,
                                                                   emulator: Emulator) -> None:
    _pool_tracker[:] = [make_tracker()]
    _pool_tracker[0].track("pool-parent", "started")
    with _fork.Pool(3) as pool:
        pids = pool.map(_pool_task, range(300), chunksize=10)
        pool.close()
        pool.join()  # workers end normally: their exit hook delivers
    assert len(set(pids)) >= 2
    assert _pool_tracker[0].flush(timeout=10)
    events = all_events(emulator.state())
    assert sorted(e["data"]["n"] for e in events if e["name"] == "task") == list(range(300))
    assert [e["name"] for e in events].count("started") == 1
    _pool_tracker.clear()



def _raw_fork(child: Callable[[], int]) -> int:
    """Run ``child`` in a process made by libc fork() straight from C (as uWSGI can do): Python's
    os.register_at_fork hooks do not run; only the core's pthread_atfork handler sees it. PyDLL keeps
    the GIL held across the call. Returns the child's exit code."""
    libc = ctypes.PyDLL(None)
    # Without Python's after-fork handling, a child inherits a pending "drop the GIL" request from any
    # parent thread that was waiting for the GIL at fork time (the in-process emulator's threads, the
    # sender), and would wait forever for a thread that does not exist in it. A long switch interval
    # keeps every waiting thread from raising that request; the short sleep lets those already
    # waiting run first. (uWSGI forks before any thread exists, so it never meets this.)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    time.sleep(0.05)
    pid = libc.fork()
    if pid == 0:
        code = 1
        try:
            sys.setswitchinterval(interval)
            code = child()
        finally:
            os._exit(code)
    sys.setswitchinterval(interval)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the raw-forked child hung")
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])


def test_a_fork_that_skips_python_hooks_is_caught_by_the_core(make_tracker: TrackerFactory,
                                                              emulator: Emulator) -> None:
    tracker = make_tracker(flush_interval=5.0)
    tracker.track("raw-parent", "queued-before")

    def child() -> int:
        for i in range(50):
            tracker.track("raw-child", "in-child", {"i": i})  # FORKED -> rebuilt -> queued
        code = 0 if tracker.flush(timeout=10) else 2
        tracker.close(timeout=5)
        return code

    assert _raw_fork(child) == 0
    assert tracker.flush(timeout=10)
    people = events_by_person(emulator)
    assert sorted(e["data"]["i"] for e in people["raw-child"]) == list(range(50))
    assert [e["name"] for e in people["raw-parent"]] == ["queued-before"]  # the parent's, sent once


def test_a_child_forked_past_python_hooks_leaves_the_parents_queue_alone_at_exit(
        make_tracker: TrackerFactory, emulator: Emulator, tmp_path: pathlib.Path) -> None:
    # The child never calls the tracker, so the core never tells it about the fork; its exit handler
    # must still not close the parent's pipeline copy (spooling or sending the parent's queue).
    tracker = make_tracker(flush_interval=5.0, spool_dir=tmp_path, exit_timeout=1.0)
    for i in range(20):
        tracker.track("raw-parent", "queued-before", {"i": i})

    def child() -> int:
        atexit._run_exitfuncs()  # what a normal interpreter exit runs
        return 0

    assert _raw_fork(child) == 0
    assert tracker.flush(timeout=10)
    tracker.close(timeout=5)
    spool = Spool(spool_directory(tmp_path, SITE_ID))
    on_disk = [op for segment in spool.claim() for _, ops in segment.records() for op in ops]
    spool.close()
    assert on_disk == []
    assert sorted(e["data"]["i"] for e in events_by_person(emulator)["raw-parent"]) == list(range(20))
    assert emulator.stats().get("duplicates", 0) == 0


def _spool_child(tracker: Tracker) -> None:
    for i in range(200):
        tracker.track("spool-child", "e", {"i": i})


def test_fork_with_a_spool_keeps_parent_and_child_records_apart(emulator: Emulator,
                                                               tmp_path: pathlib.Path) -> None:
    port = free_port()
    options: dict[str, Any] = dict(spool_dir=tmp_path, rate_limit=0, retry_budget=0.1, backoff_base=0.01,
                                   flush_interval=0.02, exit_timeout=2.0)
    parent = Tracker(SITE_ID, API_KEY, endpoint=f"http://127.0.0.1:{port}", **options)
    for i in range(100):
        parent.track("spool-parent", "e", {"i": i})
    assert parent.flush(timeout=10) and parent.stats().spooled == 100  # the parent holds a writer segment
    child = _fork.Process(target=_spool_child, args=(parent,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    parent.track("spool-parent", "e", {"i": 100})
    parent.close(timeout=2)
    spool = Spool(spool_directory(tmp_path, SITE_ID))
    names = Counter(json.loads(op)["identifiers"]["id"] for segment in spool.claim()
                    for _, ops in segment.records() for op in ops)
    spool.close()
    assert names == {"spool-parent": 101, "spool-child": 200}

    with Tracker(SITE_ID, API_KEY, endpoint=emulator.url, **options) as again:
        assert again.flush(timeout=20)
    people = events_by_person(emulator)
    assert sorted(e["data"]["i"] for e in people["spool-parent"]) == list(range(101))
    assert sorted(e["data"]["i"] for e in people["spool-child"]) == list(range(200))


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gunicorn exited during startup"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gunicorn did not start listening")


def test_gunicorn_preload_with_four_workers_delivers_every_request_event_once(emulator: Emulator,
                                                                              tmp_path: pathlib.Path) -> None:
    gunicorn = pathlib.Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed in this venv")
    port = free_port()
    env = {**os.environ, "CIOTRACK_SITE_ID": SITE_ID, "CIOTRACK_API_KEY": API_KEY,
           "CIOTRACK_ENDPOINT": emulator.url, "CIOTRACK_RATE_LIMIT": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(APPS), os.environ.get("PYTHONPATH")) if p)}
    args = [str(gunicorn), "--preload", "-w", "4", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20"]
    if "--no-control-socket" in subprocess.run([str(gunicorn), "--help"], capture_output=True, text=True).stdout:
        args.append("--no-control-socket")  # gunicorn 24+: no shared socket under ~/.gunicorn
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([*args, "tracked_app:app"], stdout=log, stderr=log, env=env)
    try:
        _wait_listening(port, proc)
        served: list[int] = []
        lock = threading.Lock()

        def client(numbers: range) -> None:
            with requests.Session() as session:
                session.trust_env = False
                for n in numbers:
                    response = session.get(f"http://127.0.0.1:{port}/?n={n}", timeout=10,
                                           headers={"Connection": "close"})
                    assert response.status_code == 200
                    with lock:
                        served.append(int(response.text))

        clients = [threading.Thread(target=client, args=(range(k, 400, 8),)) for k in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert len(served) == 400
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: the workers exit normally, their exit hook delivers
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "gunicorn.log").read_text()
    events = all_events(emulator.state())
    requests_seen = [e for e in events if e["name"] == "request"]
    missing = sorted(set(range(400)) - {e["data"]["n"] for e in requests_seen})
    assert missing == [] and len(requests_seen) == 400, (missing, (tmp_path / "gunicorn.log").read_text()[-3000:])
    assert {e["data"]["pid"] for e in requests_seen} == set(served)  # tracked where it was served
    assert len(set(served)) >= 2  # several workers really served (and delivered)
    assert [e["name"] for e in events].count("preloaded") == 1  # the master's, not copied into workers
    assert emulator.stats()["duplicates"] == 0
