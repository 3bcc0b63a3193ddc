"""The ways real apps end their processes, run for real: multiprocessing children that make their own
tracker (fork, forkserver), ``with Pool(...)`` (its exit terminates the workers with SIGTERM while they
deliver), Celery prefork pool children (which end in ``os._exit`` without running multiprocessing's
exit function), daemon threads still calling ``track()`` while the exit handler closes the tracker, and
gunicorn's quick shutdown reaching workers that are already delivering at exit. Every accepted event must
reach the emulator, or be counted as dropped; never silently lost, and no traceback at exit."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from celery_worker import run_until_tasks_done
from ciotrack.emulator import Emulator
from ciotrack.tracker import Tracker
from redis_harness import RedisServer

from conftest import API_KEY, SITE_ID, all_events, free_port

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIOTRACK_")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(PYTHON_DIR), os.environ.get("PYTHONPATH")) if p),
               NO_PROXY="127.0.0.1", PYTHONUNBUFFERED="1", **extra)
    return env


def _make_and_produce(endpoint: str, child: int, count: int) -> None:
    # The tracker is made in the child, after multiprocessing ran its after-fork hooks.
    tracker = Tracker(SITE_ID, API_KEY, endpoint=endpoint, rate_limit=0, flush_interval=5.0)
    for i in range(count):
        tracker.track(f"own-{child}", "child", {"i": i})
    # No flush(), no close(): the child ends in os._exit once this returns.


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_multiprocessing_child_that_makes_its_own_tracker_delivers_at_exit(method: str,
                                                                            emulator: Emulator) -> None:
    context = multiprocessing.get_context(method)
    children = [context.Process(target=_make_and_produce, args=(emulator.url, n, 200)) for n in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    people = {pid: person["events"] for pid, person in emulator.state()["people"].items()}
    for n in range(2):
        assert sorted(e["data"]["i"] for e in people.get(f"own-{n}", [])) == list(range(200))
    assert emulator.stats()["duplicates"] == 0


POOL_SCRIPT = """
    import multiprocessing, sys
    import ciotrack

    _tracker = []

    def task(n):
        if not _tracker:  # one tracker per worker, made where it runs
            _tracker.append(ciotrack.Tracker({site!r}, {key!r}, endpoint={url!r}, rate_limit=0))
        _tracker[0].track(f"pool-{{n % 5}}", "task", {{"n": n}})

    if __name__ == "__main__":
        context = multiprocessing.get_context(sys.argv[1])
        with context.Pool(2) as pool:  # __exit__ is terminate(): SIGTERM to workers still delivering
            pool.map(task, range(200), chunksize=10)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_left_by_its_with_block_delivers_every_task_event(method: str, emulator: Emulator,
                                                                 tmp_path: Path) -> None:
    emulator.set_faults(latency=1.0)  # the workers are still delivering when terminate() signals them
    script = tmp_path / "pool_app.py"
    script.write_text(textwrap.dedent(POOL_SCRIPT.format(site=SITE_ID, key=API_KEY, url=emulator.url)))
    result = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=120,
                            env=_env(), cwd=tmp_path)
    emulator.clear_faults()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert sorted(e["data"]["n"] for e in all_events(emulator.state())) == list(range(200)), result.stderr


DAEMON_SCRIPT = """
    import atexit, json, threading, time

    def report():  # registered before ciotrack's exit handler, so it runs after it
        time.sleep(0.3)  # the daemon thread goes on calling meanwhile
        s = tracker.stats()
        print(json.dumps({{"accepted": s.accepted, "delivered": s.delivered, "failed": s.failed_total,
                          "spooled": s.spooled, "dropped": dict(s.dropped), "queued": sum(s.queued_ops.values()),
                          "in_flight": s.in_flight_ops}}))

    atexit.register(report)

    import ciotrack

    tracker = ciotrack.Tracker({site!r}, {key!r}, endpoint={url!r}, rate_limit=0, flush_interval=0.05)

    def keep_tracking():
        i = 0
        while True:
            tracker.track("daemon", "tick", {{"i": i}})
            i += 1
            time.sleep(0.0005)

    threading.Thread(target=keep_tracking, daemon=True).start()
    time.sleep(0.3)
"""


def test_calls_from_a_daemon_thread_after_the_exit_handler_are_counted_not_lost(emulator: Emulator,
                                                                                 tmp_path: Path) -> None:
    script = tmp_path / "daemon_app.py"
    script.write_text(textwrap.dedent(DAEMON_SCRIPT.format(site=SITE_ID, key=API_KEY, url=emulator.url)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=_env())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    s: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    dropped = s["dropped"]
    assert dropped.get("closed", 0) > 0  # the thread really called after the exit handler closed the tracker
    # Nothing left in the queue that nobody will ever send, and every accepted call accounted for.
    assert s["queued"] == 0 and s["in_flight"] == 0, s
    never_accepted = dropped.get("queue_full", 0) + dropped.get("closed", 0)
    assert s["accepted"] == s["delivered"] + s["failed"] + s["spooled"] + sum(dropped.values()) - never_accepted, s
    assert len(all_events(emulator.state())) == s["delivered"]


CELERY_APP = """
    import os

    import ciotrack
    from celery import Celery

    app = Celery("tracked_tasks", broker=os.environ["CELERY_BROKER_URL"])
    app.conf.worker_hijack_root_logger = False

    # Module level: made in the worker's main process, before the pool forks. The long linger keeps
    # every event queued until its pool process ends, which must deliver it.
    tracker = ciotrack.Tracker(flush_interval=30.0)


    @app.task
    def charge(n: int) -> None:
        tracker.track(f"user-{n % 10}", "charged", {"n": n})
"""

TASKS = 40


@pytest.mark.parametrize("recycle", [False, True], ids=["warm-shutdown", "max-tasks-per-child"])
def test_celery_pool_children_deliver_what_they_hold_when_they_end(recycle: bool, emulator: Emulator,
                                                                   redis_server: RedisServer, tmp_path: Path) -> None:
    pytest.importorskip("celery")
    (tmp_path / "tracked_tasks.py").write_text(textwrap.dedent(CELERY_APP))
    env = _env(CIOTRACK_ENDPOINT=emulator.url, CIOTRACK_SITE_ID=SITE_ID, CIOTRACK_API_KEY=API_KEY,
               CIOTRACK_RATE_LIMIT="0", CELERY_BROKER_URL=redis_server.url)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    producer = f"from tracked_tasks import charge\nfor i in range({TASKS}):\n    charge.delay(i)\n"
    subprocess.run([sys.executable, "-c", producer], cwd=tmp_path, env=env, check=True, timeout=60)
    args = [sys.executable, "-m", "celery", "-A", "tracked_tasks", "worker", "--pool=prefork", "--concurrency=2",
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if recycle:
        args.append("--max-tasks-per-child=10")
    run = run_until_tasks_done(args, cwd=tmp_path, env=env, tasks=TASKS, timeout=120)
    text = run.log
    assert run.ran, text
    assert run.returncode == 0 and "Traceback" not in text, text
    events = all_events(emulator.state())
    assert Counter(e["data"]["n"] for e in events) == Counter(range(TASKS)), text


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited during startup"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server did not start listening")


def test_gunicorn_quick_shutdown_of_workers_already_delivering_at_exit_is_quiet(emulator: Emulator,
                                                                                 tmp_path: Path) -> None:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed in this venv")
    port = free_port()
    env = _env(CIOTRACK_SITE_ID=SITE_ID, CIOTRACK_API_KEY=API_KEY, CIOTRACK_ENDPOINT=emulator.url,
               CIOTRACK_RATE_LIMIT="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "apps"), env["PYTHONPATH"]])
    # --max-requests 1: each worker exits after its request, and is still delivering its event (the
    # emulator answers after 3 s) when the master's quick shutdown (SIGQUIT) reaches it.
    args = [str(gunicorn), "-w", "2", "--max-requests", "1", "-b", f"127.0.0.1:{port}", "tracked_app:app"]
    if "--no-control-socket" in subprocess.run([str(gunicorn), "--help"], capture_output=True, text=True).stdout:
        args.append("--no-control-socket")
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
    try:
        _wait_listening(port, proc)
        emulator.set_faults(latency=3.0)
        with requests.Session() as session:
            session.trust_env = False
            for n in range(2):
                assert session.get(f"http://127.0.0.1:{port}/?n={n}", timeout=10).status_code == 200
        # Both exiting workers are inside their request when the quick shutdown comes.
        assert emulator.wait_for(lambda: emulator.stats()["in_flight"] >= 2, timeout=10)
    finally:
        proc.send_signal(signal.SIGQUIT)
        code = proc.wait(timeout=60)
        log.close()
    emulator.clear_faults()
    text = (tmp_path / "gunicorn.log").read_text()
    assert code == 0, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    # Cut short, close() still waited (within exit_timeout) for the requests already under way.
    assert sorted(e["data"]["n"] for e in all_events(emulator.state()) if e["name"] == "request") == [0, 1]
