"""Run by test_fleet_limiter.py in separate processes: take slots from a shared RedisLimiter for
``seconds`` and print the wall-clock time of each grant (one per line), then ``done``.

    python limiter_client.py URL RATE BURST SECONDS [PAUSE_AT PAUSE_SECONDS]
"""

from __future__ import annotations

import sys
import time

from ciotrack.fleet.limiter import RedisLimiter
from ciotrack.fleet.producer import connect


def main() -> None:
    url, rate, burst, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    pause_at = float(sys.argv[5]) if len(sys.argv) > 5 else None
    pause_seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    limiter = RedisLimiter(connect(url), "site-1", "us", rate, burst)
    print("ready", flush=True)
    start = float(sys.stdin.readline())  # a common start time, so every process runs the same window
    time.sleep(max(0.0, start - time.time()))
    grants = []
    paused = False
    while time.time() < start + seconds:
        if pause_at is not None and not paused and time.time() >= start + pause_at:
            print(f"paused {time.time()}", flush=True)
            limiter.pause(pause_seconds)
            paused = True
        if limiter.acquire(0.5):
            grants.append(time.time())
    for grant in grants:
        print(grant)
    print("done", flush=True)
    limiter.close()


if __name__ == "__main__":
    main()
