"""Every thread ciotrack starts blocks SIGTERM and SIGINT.

The kernel hands a process-directed signal to any thread that does not block it. Received on one of
ours, Python's handler only runs at the main thread's next bytecode, which a main thread asleep in
``time.sleep`` never reaches: the process ignores SIGTERM until its sleep ends (seen: a tracker with
the API down that did not exit on SIGTERM, because its request-deadline thread took the signal). The
masks are read from ``/proc/self/task/<tid>/status`` of the live threads.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ciotrack.emulator import Emulator
from ciotrack.tracker import Tracker
from ciotrack.webhooks.workers import Workers

EXIT_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def blocked(thread: threading.Thread) -> set[int]:
    """The signals ``thread`` blocks (its ``SigBlk`` mask)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def ciotrack_threads() -> dict[str, threading.Thread]:
    return {t.name: t for t in threading.enumerate() if t.name.startswith("ciotrack-") and t.native_id is not None}


def assert_all_block(threads: dict[str, threading.Thread]) -> None:
    unblocked = {name: sorted(EXIT_SIGNALS - blocked(t)) for name, t in threads.items() if EXIT_SIGNALS - blocked(t)}
    assert not unblocked, f"threads that would take the process's SIGTERM/SIGINT: {unblocked}"
    assert EXIT_SIGNALS - blocked(threading.main_thread()) == EXIT_SIGNALS  # the main thread still takes them


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_delivering_trackers_threads_block_exit_signals(tmp_path: Path) -> None:
    with Emulator(workspaces={"site": "key"}) as emulator:
        emulator.set_faults(latency=1.0)  # a request in flight: the deadline watchdog is running
        tracker = Tracker("site", "key", endpoint=emulator.url, spool_dir=tmp_path, rate_limit=0)
        try:
            tracker.track("u", "e", {"i": 1})
            assert emulator.wait_for(lambda: emulator.stats()["in_flight"] >= 1, timeout=10)
            threads = ciotrack_threads()
            assert {"ciotrack-sender-0", "ciotrack-deadline", "ciotrack-spooler"} <= set(threads), sorted(threads)
            assert_all_block(threads)
            emulator.clear_faults()
        finally:
            tracker.close(timeout=10)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_webhook_handler_threads_block_exit_signals() -> None:
    seen: list[Any] = []
    workers: Workers[int] = Workers(2, seen.append, name="ciotrack-webhooks")
    try:
        workers.submit(1)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        threads = ciotrack_threads()
        assert {"ciotrack-webhooks-0", "ciotrack-webhooks-1"} <= set(threads), sorted(threads)
        assert_all_block(threads)
    finally:
        workers.stop(timeout=5)
