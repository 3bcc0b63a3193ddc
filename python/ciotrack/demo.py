"""``ciotrack demo``: a load run of the tracker against the built-in Customer.io emulator.

The emulator runs in a subprocess so that it does not share this process's GIL: the figures are the
tracker's, not the server's. Every operation sent is then checked against the emulator's count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

SITE_ID = "demo-site"
API_KEY = "demo-key"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operations", type=int, default=200_000, help="operations to send (default 200000)")
    parser.add_argument("--senders", type=int, default=2, help="sender threads (default 2)")
    parser.add_argument("--endpoint", help="use an emulator already running at this URL instead of starting one")


def _percentile(sorted_values: list[int], q: float) -> float:
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def run(args: argparse.Namespace) -> int:
    import ciotrack
    from ciotrack.emulator import Emulator

    handle: Any = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        handle = Emulator.spawn(workspaces={SITE_ID: API_KEY})
        endpoint = handle.url
    try:
        return _load_run(ciotrack, endpoint, handle, args.operations, args.senders)
    finally:
        if handle is not None:
            handle.stop()


def _load_run(ciotrack: Any, endpoint: str, emulator: Any, total: int, senders: int) -> int:
    tracker = ciotrack.Tracker(SITE_ID, API_KEY, endpoint=endpoint, senders=senders, rate_limit=0)
    print(f"ciotrack demo: {total:,} mixed operations -> emulator at {endpoint} ({senders} senders)")
    track_ns: list[int] = []
    clock = time.perf_counter_ns
    tracked = identified = paged = 0
    started = time.perf_counter()
    for i in range(total):
        customer = f"user-{i % 5000}"
        kind = i % 10
        if kind < 7:
            t0 = clock()
            tracker.track(customer, "checkout", {"total": i * 0.5, "currency": "EUR", "items": i % 7,
                                                 "first": kind == 0, "cart": {"sku": f"sku-{i % 97}", "qty": 2}})
            track_ns.append(clock() - t0)
            tracked += 1
        elif kind < 9:
            # Distinct attributes each time: identify dedup must not skip any of them in this run.
            tracker.identify(customer, {"plan": "pro", "seen": i, "email": f"{customer}@example.com"})
            identified += 1
        else:
            tracker.page(customer, f"/products/{i % 311}", {"ref": "demo"})
            paged += 1
    calls_done = time.perf_counter()
    delivered = tracker.flush(timeout=120)
    flushed = time.perf_counter()
    stats = tracker.stats()
    tracker.close()

    track_ns.sort()
    calls_s = total / (calls_done - started)
    e2e_s = total / (flushed - started)
    print(f"  calls:     {calls_s:,.0f} calls/s  ({tracked:,} track, {identified:,} identify, {paged:,} page)")
    print(f"  track():   median {statistics.median(track_ns) / 1000:.2f} us, "
          f"p99 {_percentile(track_ns, 0.99) / 1000:.2f} us (per-call timer included)")
    print(f"  delivery:  {e2e_s:,.0f} events/s end to end, flush {'complete' if delivered else 'TIMED OUT'}")
    received = _received(endpoint, emulator)
    ok = delivered and received == total
    print(f"  emulator:  {received:,} of {total:,} operations arrived" + ("" if ok else "  <-- MISMATCH"))
    print("  stats:     " + ", ".join(f"{k}={v}" for k, v in sorted(_flat_counters(stats).items())))
    return 0 if ok else 1


def _received(endpoint: str, emulator: Any) -> int:
    import requests

    data = emulator.stats() if emulator is not None else requests.get(f"{endpoint}/_emulator/stats", timeout=10).json()
    return int(data["operations"])


def _flat_counters(stats: Any) -> dict[str, Any]:
    counters = getattr(stats, "counters", None)
    if counters is None and isinstance(stats, dict):
        counters = stats.get("counters", {})
    return dict(counters or {})
