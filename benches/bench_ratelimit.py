"""ciotrack at a server's rate limit: delivered events/s against the ceiling, zero 429s, no loss.

    .venv/bin/python benches/bench_ratelimit.py [--events 1000000] [--senders 2] [--json out.json]

The emulator runs in a subprocess (its own GIL) enforcing 100 requests/s with a burst of 10 per
workspace, as Customer.io's load guidance plans for. The ceiling is what that limit allows at best:
100 requests/s x the operations of the workload's event that fit in one 500 KB ``/api/v2/batch``
body (measured by assembling batches with the core itself, so the figure follows the encoder).

1. **At the limit**: ``--events`` ``track()`` calls (default 1M) through a tracker with ciotrack's
   default limiter (token bucket 100 requests/s, burst 5) and ``--senders`` threads (default 2: one
   sender leaves a few percent on the table, since its own request time and the wait for the next
   token run back to back; ``--senders 1`` shows it). 1M operations (~250 MB encoded) do not fit the
   default 64 MiB queue, so the producer is *paced by the queue*: ``on_full="block"`` (a call waits,
   GIL released, for room instead of dropping); the queue bound stays the default. The window runs
   from the first call until ``flush()`` returns. Printed: events/s, the ceiling, their ratio, 429s
   (the emulator's count and the client's), the requests made, and the no-loss check (the emulator
   stored exactly the events sent, each id once).
2. **Send concurrency**: the same limit plus 50 ms of latency per request at the emulator; events/s
   for each ``--concurrency`` sender count (default 1, 2, 4, 8). Each sender keeps one request in
   flight, so throughput grows with senders until 100 requests/s binds (about 5 senders at ~50 ms).

Nothing here asserts on speed: the script exits non-zero only when an event is lost or duplicated or
a 429 is drawn. Under pytest (``make bench``; ``--quick`` runs 200k events) the same two runs report
into the session's figure summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

BENCHES = os.path.dirname(os.path.abspath(__file__))
if BENCHES not in sys.path:
    sys.path.insert(0, BENCHES)

from ciotrack import Tracker, _core  # noqa: E402
from ciotrack.emulator import Emulator  # noqa: E402
from peers.workload import CUSTOMER_IDS, EVENT_NAME, EVENT_POOL, POOL_SIZE  # noqa: E402

SITE_ID, API_KEY = "bench-site", "bench-key"
RATE_LIMIT = 100.0  # requests/s at the emulator, and ciotrack's default bucket rate
SERVER_BURST = 10.0
CLIENT_BURST = 5.0  # ciotrack's default rate_burst
BATCH_BYTES = _core.MAX_BATCH_BYTES
LATENCY = 0.05


def ops_per_full_batch(sample: int = 40_000) -> float:
    """Mean operations in a full 500 KB batch of the workload's events, assembled by the core."""
    core = _core.Core(max_batch_bytes=BATCH_BYTES, dedup_ttl=0)
    for i in range(sample):
        core.event(0, "event", CUSTOMER_IDS[i % POOL_SIZE], None, EVENT_NAME, EVENT_POOL[i % POOL_SIZE])
    lane = core.lane(0)
    counts: list[int] = []
    while lane.queued_bytes() >= BATCH_BYTES:  # only batches that were cut by the byte limit
        batch = lane.next_batch()
        assert batch is not None
        counts.append(batch.count)
    return sum(counts) / len(counts)


def run(emulator: Any, events: int, senders: int) -> dict[str, Any]:
    """``events`` track() calls through a default-configured tracker (queue-paced); the figures."""
    emulator.reset()
    gc.collect()
    tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, senders=senders, rate_limit=RATE_LIMIT,
                      on_full="block", block_timeout=60.0)
    track = tracker.track
    ids, pool = CUSTOMER_IDS, EVENT_POOL
    try:
        t0 = time.perf_counter()
        for i in range(events):
            track(ids[i % POOL_SIZE], EVENT_NAME, pool[i % POOL_SIZE])
        t_calls = time.perf_counter()
        flushed = tracker.flush(timeout=600)
        t1 = time.perf_counter()
    finally:
        tracker.close(timeout=30)
    server = emulator.stats()
    counters = tracker.stats().counters
    seconds = t1 - t0
    return {
        "events": events,
        "senders": senders,
        "flushed": flushed,
        "seconds": seconds,
        "calls_seconds": t_calls - t0,
        "events_per_s": server["events"] / seconds,
        "requests": server["requests"],
        "requests_per_s": server["requests"] / seconds,
        "server_429": int(server["by_status"].get("429", 0)),
        "client_429": int(counters.get("requests_429", 0)),
        "server_by_status": server["by_status"],
        "stored": server["events"],
        "server_duplicates": server["duplicates"],
        "delivered": counters.get("delivered", 0),
        "failed": counters.get("failed", 0),
        "dropped": counters.get("dropped_full", 0) + counters.get("dropped_shutdown", 0),
        "max_in_flight": server["max_in_flight"],
    }


def with_ratios(result: dict[str, Any], per_batch: float) -> dict[str, Any]:
    """Adds ``ratio`` (events/s over the ceiling) and ``steady_ratio``: the same without the events
    of the client bucket's initial burst, which a short run would otherwise get for free."""
    ceiling = RATE_LIMIT * per_batch
    result["ratio"] = result["events_per_s"] / ceiling
    result["steady_ratio"] = max(0.0, result["stored"] - CLIENT_BURST * per_batch) / result["seconds"] / ceiling
    return result


def lossless(result: dict[str, Any]) -> bool:
    """Every event stored exactly once at the emulator, none failed or dropped at the client."""
    n = result["events"]
    return bool(result["flushed"]) and (result["stored"] == n and result["delivered"] == n and result["failed"] == 0
                                        and result["dropped"] == 0 and result["server_duplicates"] == 0)


def clean(result: dict[str, Any]) -> bool:
    """The run's correctness (not its speed): no loss, no duplicate, and not one 429."""
    return lossless(result) and result["server_429"] == 0 and result["client_429"] == 0


def spawn_limited() -> Any:
    return Emulator.spawn(workspaces={SITE_ID: API_KEY}, rate_limit=RATE_LIMIT, burst=SERVER_BURST)


def print_limit(result: dict[str, Any], ceiling: float) -> None:
    print(f"at the limit: {result['events']:,} events, senders={result['senders']}, emulator "
          f"{RATE_LIMIT:.0f} requests/s burst {SERVER_BURST:.0f}; ciotrack bucket {RATE_LIMIT:.0f}/s burst "
          f"{CLIENT_BURST:.0f} "
          f"(default), on_full='block' (producer paced by the 64 MiB queue)")
    print(f"  events/s      {result['events_per_s']:>12,.0f}   ({result['seconds']:.2f} s, first call -> flush)")
    print(f"  ceiling       {ceiling:>12,.0f}")
    print(f"  ratio         {result['ratio']:>12.1%}   (includes the bucket's initial burst of {CLIENT_BURST:.0f} "
          f"requests, {CLIENT_BURST / max(1, result['requests']):.1%} of this run's)")
    print(f"  ratio, steady {result['steady_ratio']:>12.1%}   (the events of that burst left out)")
    print(f"  429s          {result['server_429']:>12}   (client saw {result['client_429']})")
    print(f"  requests      {result['requests']:>12,}   ({result['requests_per_s']:.1f}/s)")
    print(f"  no loss       {'yes' if lossless(result) else 'NO':>12}   (stored {result['stored']:,}, "
          f"duplicates {result['server_duplicates']}, failed {result['failed']}, dropped {result['dropped']})")


def concurrency_runs(emulator: Any, events: int, sender_counts: Sequence[int]) -> list[dict[str, Any]]:
    """One run per sender count with ``LATENCY`` added to every request at the emulator."""
    emulator.set_faults(latency=LATENCY)
    try:
        return [run(emulator, events, senders) for senders in sender_counts]
    finally:
        emulator.clear_faults()


def print_concurrency(runs: list[dict[str, Any]], per_batch: float) -> None:
    print(f"send concurrency: {runs[0]['events']:,} events per run, {LATENCY * 1000:.0f} ms latency per request, "
          "same limit")
    print(f"  {'senders':>7} {'events/s':>10} {'vs 1':>6} {'requests/s':>10} {'in flight':>9} {'429s':>5}  no loss")
    base = runs[0]["events_per_s"] / runs[0]["senders"]
    for result in runs:
        print(f"  {result['senders']:>7} {result['events_per_s']:>10,.0f} {result['events_per_s'] / base:>5.2f}x "
              f"{result['requests_per_s']:>10.1f} {result['max_in_flight']:>9} {result['server_429']:>5}  "
              f"{'yes' if lossless(result) else 'NO'}")
    print(f"  (the limit binds at {RATE_LIMIT:.0f} requests/s = {RATE_LIMIT * per_batch:,.0f} events/s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the at-the-limit run")
    parser.add_argument("--senders", type=int, default=2, help="sender threads of the at-the-limit run")
    parser.add_argument("--concurrency", default="1,2,4,8",
                        help="sender counts of the latency run, comma-separated ('' skips it)")
    parser.add_argument("--concurrency-events", type=int, default=200_000, help="events per latency run")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    sender_counts = [int(n) for n in args.concurrency.split(",") if n.strip()]

    per_batch = ops_per_full_batch()
    ceiling = RATE_LIMIT * per_batch
    print(f"event: track(customer, {EVENT_NAME!r}, 5 properties); {per_batch:,.0f} ops per full 500 KB batch; "
          f"ceiling {RATE_LIMIT:.0f} requests/s x {per_batch:,.0f} = {ceiling:,.0f} events/s\n")
    report: dict[str, Any] = {"ops_per_batch": per_batch, "ceiling": ceiling, "rate_limit": RATE_LIMIT,
                              "server_burst": SERVER_BURST}
    ok = True
    emulator = spawn_limited()
    try:
        result = with_ratios(run(emulator, args.events, args.senders), per_batch)
        report["limit"] = result
        ok &= clean(result)
        print_limit(result, ceiling)
        if sender_counts:
            runs = concurrency_runs(emulator, args.concurrency_events, sender_counts)
            report["concurrency"] = runs
            ok &= all(clean(r) for r in runs)
            print()
            print_concurrency(runs, per_batch)
    finally:
        emulator.stop()
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    if not ok:
        print("\nFAILED: an event was lost or duplicated, or a 429 was drawn (see above)")
    return 0 if ok else 1


# -- under pytest (``make bench``): the same runs, figures in the session summary -------------------


@pytest.fixture(scope="module")
def limited_emulator() -> Iterator[Any]:
    handle = spawn_limited()
    try:
        yield handle
    finally:
        handle.stop()


def test_rate_limit_ceiling(benchmark: Any, bench_report: Any, limited_emulator: Any, quick: bool) -> None:
    per_batch = ops_per_full_batch()
    ceiling = RATE_LIMIT * per_batch
    events = 200_000 if quick else 1_000_000
    result: dict[str, Any] = {}
    benchmark.pedantic(lambda: result.update(run(limited_emulator, events, 2)), rounds=1, iterations=1)
    assert clean(result), result  # correctness, not speed
    with_ratios(result, per_batch)
    benchmark.extra_info.update(result)
    bench_report.add("rate limit", f"{events:,} events at 100 req/s: events/s", f"{result['events_per_s']:,.0f}",
                     f"emulator limit 100/s burst 10, 2 senders; ceiling {ceiling:,.0f} "
                     f"(100 x {per_batch:,.0f} ops per 500 KB batch)")
    bench_report.add("rate limit", "ratio to the ceiling", f"{result['ratio']:.1%}",
                     f"goal >= 90 %; steady (initial burst left out) {result['steady_ratio']:.1%}; "
                     f"{result['requests']} requests, {result['server_429']} 429s, no loss")
    bench_report.keep("ratelimit.limit", result)


def test_send_concurrency(benchmark: Any, bench_report: Any, limited_emulator: Any, quick: bool) -> None:
    events = 50_000 if quick else 200_000
    runs: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: runs.extend(concurrency_runs(limited_emulator, events, (1, 2, 4, 8))),
                       rounds=1, iterations=1)
    assert all(clean(r) for r in runs), runs
    base = runs[0]["events_per_s"]
    for result in runs:
        bench_report.add("rate limit", f"senders={result['senders']}, 50 ms latency: events/s",
                         f"{result['events_per_s']:,.0f}",
                         f"{result['events_per_s'] / base:.2f}x senders=1; {result['requests_per_s']:.0f} requests/s "
                         f"(limit 100)")
    bench_report.keep("ratelimit.concurrency", runs)


if __name__ == "__main__":
    sys.exit(main())
