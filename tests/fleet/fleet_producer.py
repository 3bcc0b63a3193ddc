"""A producer process for the fleet tests: ``Tracker(redis_url=...)`` tracking events, then flush.

    python fleet_producer.py REDIS_URL SITE_ID PRODUCER_INDEX N_EVENTS SECONDS

Events are ``track("c<p>-<i % 20>", "fleet", {"p": p, "seq": i})``, spread over SECONDS. Prints
``flushed <True|False> <delivered>`` at the end: delivered means durable in Redis here.
"""

from __future__ import annotations

import sys
import time

from ciotrack import Tracker


def main() -> None:
    url, site_id, index, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    tracker = Tracker(site_id, redis_url=url, flush_interval=0.05, retry_budget=120.0, max_retries=60,
                      backoff_cap=1.0, handle_sigterm=False)
    start = time.monotonic()
    for i in range(n):
        tracker.track(f"c{index}-{i % 20}", "fleet", {"p": index, "seq": i})
        if seconds > 0:
            lag = start + seconds * (i + 1) / n - time.monotonic()
            if lag > 0:
                time.sleep(lag)
    flushed = tracker.flush(timeout=120)
    stats = tracker.stats()
    print(f"flushed {flushed} {stats.delivered} {stats.destination}", flush=True)
    tracker.close()


if __name__ == "__main__":
    main()
