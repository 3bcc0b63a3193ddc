"""``track()``/``identify()`` per call in loops of 2,000 calls while the sender delivers, min and median
of 30 rounds (emulator in a subprocess; a flush between rounds). The timer is read once per loop, so
this shows the call itself; compare two builds by running it with each on ``PYTHONPATH``, alternating.

    PYTHONPATH=python .venv/bin/python benches/call_loop.py

Two figures per row: wall time per call, and the calling thread's own CPU time per call
(``time.thread_time_ns``), which leaves out the time the loop waited for the GIL while a sender
thread held it (on a busy 2-core VM that wait is most of the spread between rounds). The floor row is
``orjson.dumps`` of the same properties in the same loop (when orjson is installed): a machine's speed
changes from day to day, the ratio to that floor much less.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ciotrack
from ciotrack.emulator import Emulator

ROUNDS, CALLS = 30, 2000


def _rounds(call: Callable[[int, int], Any], between: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """``call(round, i)`` CALLS times per round; wall and thread-CPU ns per call, each sorted."""
    wall: list[float] = []
    cpu: list[float] = []
    for r in range(ROUNDS):
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for i in range(CALLS):
            call(r, i)
        cpu.append((time.thread_time_ns() - started_cpu) / CALLS)
        wall.append((time.perf_counter_ns() - started) / CALLS)
        between()
    return sorted(wall), sorted(cpu)


def _row(name: str, figures: tuple[list[float], list[float]]) -> float:
    wall, cpu = figures
    print(f"{name:<22} wall min {wall[0]:5.0f} ns  median {wall[ROUNDS // 2]:5.0f} ns   "
          f"thread CPU median {cpu[ROUNDS // 2]:5.0f} ns")
    return cpu[ROUNDS // 2]


def main() -> None:
    handle = Emulator.spawn(workspaces={"s": "k"})
    tracker = ciotrack.Tracker("s", "k", endpoint=handle.url, rate_limit=0)
    data = {"total": 12.5, "currency": "EUR", "items": 3, "first": True, "cart": {"sku": "sku-1", "qty": 2}}
    try:
        tracker.track("warm-up", "checkout", data)
        tracker.flush(10)
        track, identify = tracker.track, tracker.identify
        flush: Callable[[], Any] = lambda: tracker.flush(30)  # noqa: E731
        floor = None
        try:
            import orjson

            dumps = orjson.dumps
            floor = _row("floor: orjson.dumps", _rounds(lambda r, i: dumps(data), lambda: None))
        except ImportError:
            pass
        cost = _row("track()", _rounds(lambda r, i: track("user-42", "checkout", data), flush))
        # The traits differ per round: no identify dedup.
        _row("identify()", _rounds(lambda r, i: identify(i, {"plan": "pro", "n": r}), flush))
        if floor:
            print(f"track() / floor (thread CPU): {cost / floor:.2f}x")
    finally:
        tracker.close(timeout=30)
        handle.stop()


if __name__ == "__main__":
    main()
