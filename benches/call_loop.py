"""``track()``/``identify()`` per call in loops of 2,000 calls while the sender delivers, min and median
of 30 rounds (emulator in a subprocess; a flush between rounds). The timer is read once per loop, so
this shows the call itself; compare two builds by running it with each on ``PYTHONPATH``, alternating.

    PYTHONPATH=python .venv/bin/python benches/call_loop.py
"""

from __future__ import annotations

import time

import ciotrack
from ciotrack.emulator import Emulator

ROUNDS, CALLS = 30, 2000


def main() -> None:
    handle = Emulator.spawn(workspaces={"s": "k"})
    tracker = ciotrack.Tracker("s", "k", endpoint=handle.url, rate_limit=0)
    data = {"total": 12.5, "currency": "EUR", "items": 3, "first": True, "cart": {"sku": "sku-1", "qty": 2}}
    try:
        tracker.track("warm-up", "checkout", data)
        tracker.flush(10)
        track, identify = tracker.track, tracker.identify
        per_call: list[float] = []
        for _ in range(ROUNDS):
            started = time.perf_counter_ns()
            for _ in range(CALLS):
                track("user-42", "checkout", data)
            per_call.append((time.perf_counter_ns() - started) / CALLS)
            tracker.flush(30)
        per_call.sort()
        print(f"track()    min {per_call[0]:.0f} ns  median {per_call[ROUNDS // 2]:.0f} ns")
        per_call = []
        for r in range(ROUNDS):
            started = time.perf_counter_ns()
            for i in range(CALLS):
                identify(i, {"plan": "pro", "n": r})  # differs per round: no identify dedup
            per_call.append((time.perf_counter_ns() - started) / CALLS)
            tracker.flush(30)
        per_call.sort()
        print(f"identify() min {per_call[0]:.0f} ns  median {per_call[ROUNDS // 2]:.0f} ns")
    finally:
        tracker.close(timeout=30)
        handle.stop()


if __name__ == "__main__":
    main()
