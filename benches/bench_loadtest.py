"""How close ``ciotrack loadtest``'s generator gets to its target call rate on this machine.

    .venv/bin/python benches/bench_loadtest.py [--seconds 4] [--rates 50000,100000,200000] [--json out.json]

For each target rate, the load test's own driver (one generator thread, the open-model scheduler
issuing due calls in bursts, the sampler thread) runs a constant-rate stage of ``--seconds`` against
a **disabled** tracker (calls are validated and encoded by the native core, then dropped from a small
queue: ``on_full="drop_oldest"``, so delivery costs nothing and the generator is what is measured).
Then once with **real delivery** to the emulator in a subprocess (no rate limit, no latency) at
``--delivery-rate`` (default 50k calls/s), where the sender threads compete with the generator.

Printed per run: calls due, calls made and the time they took (from time 0 to the last call: later
than the schedule's end when the generator lagged and caught up), achieved calls/s and its ratio to
the target, missed starts (``dropped_iterations``: calls more than 1 s late are not run), the worst
and p99 lateness of a burst, and the median enqueue cost. Nothing here asserts on speed; under pytest (``make bench``,
``--quick``: 2 s runs) the same figures go to the session's summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ciotrack
from ciotrack.loadtest.driver import Driver
from ciotrack.loadtest.scenario import Scenario
from ciotrack.loadtest.stages import Stage


class _Quiet:
    def interval(self, record: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def run_once(rate: float, seconds: float, endpoint: str | None = None) -> dict[str, Any]:
    scenario = Scenario(name="bench", stages=(Stage(0.0, rate), Stage(seconds, rate)), mix={"track": 1.0})
    if endpoint is None:
        tracker = ciotrack.Tracker(disabled=True, on_full="drop_oldest", handle_sigterm=False)
    else:
        tracker = ciotrack.Tracker("bench-site", "bench-key", endpoint=endpoint, rate_limit=0, senders=2,
                                   max_queue_bytes=1 << 30, max_queue_ops=4_000_000, handle_sigterm=False)
    driver = Driver(tracker, [scenario], [], _Quiet(), drain_timeout=30.0, measure_delivery=endpoint is not None)
    result = driver.run()
    totals = result.totals
    # Calls made over the time they took: from time 0 to the generator's last call, which is later
    # than the schedule's end when the generator lagged (catch-up bursts), even with no missed start.
    took = max(seconds, float(totals["generator_seconds"]))
    achieved = totals["calls"] / took
    return {
        "target_rate": rate,
        "delivery": endpoint is not None,
        "seconds": seconds,
        "calls_due": int(totals["target_calls"]),
        "calls": totals["calls"],
        "achieved_rate": round(achieved),
        "ratio": achieved / rate,
        "generator_seconds": took,
        "dropped_iterations": totals["dropped_iterations"],
        "lateness_max_ms": totals["lateness_max_ms"],
        "lateness_p99_ms": totals["schedule_lateness"]["p99"],
        "enqueue_p50_us": (totals["enqueue_duration"]["p50"] or 0.0) * 1000.0,
        "delivered": totals["delivered"] if endpoint is not None else None,
        "lost": totals["lost"],
    }


def describe(r: Mapping[str, Any]) -> str:
    mode = "real delivery to the emulator" if r["delivery"] else "disabled tracker"
    behind = 1.0 - r["ratio"]
    return (f"{r['target_rate']:>9,.0f}/s ({mode}): {r['calls']:,} of {r['calls_due']:,} calls in "
            f"{r['generator_seconds']:.2f} s (schedule {r['seconds']:g} s) = {r['achieved_rate']:,}/s, "
            f"{r['ratio']:.1%} of the target; behind by {behind:.1%}, dropped_iterations="
            f"{r['dropped_iterations']:,}, lateness max {r['lateness_max_ms']:.1f} ms p99 "
            f"{r['lateness_p99_ms'] or 0:.1f} ms, enqueue p50 {r['enqueue_p50_us']:.2f} us"
            + (f", delivered {r['delivered']:,} lost {r['lost']}" if r["delivery"] else ""))


def run_all(rates: Sequence[float], seconds: float, delivery_rate: float) -> list[dict[str, Any]]:
    from ciotrack.emulator import Emulator

    results = []
    for rate in rates:
        result = run_once(rate, seconds)
        print(describe(result), flush=True)
        results.append(result)
    with Emulator.spawn(workspaces={"bench-site": "bench-key"}) as emulator:
        result = run_once(delivery_rate, seconds, endpoint=emulator.url)
        print(describe(result), flush=True)
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="50000,100000,200000")
    parser.add_argument("--delivery-rate", type=float, default=50_000.0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = run_all([float(r) for r in args.rates.split(",")], args.seconds, args.delivery_rate)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    return 0 if all(r["lost"] in (None, 0) for r in results) else 1


def test_loadtest_generator_rate(benchmark: Any, bench_report: Any, quick: bool) -> None:
    results: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: results.extend(run_all((50_000, 100_000, 200_000), 2.0 if quick else 4.0, 50_000)),
                       rounds=1, iterations=1)
    assert all(r["lost"] in (None, 0) for r in results), results  # correctness, not speed
    for r in results:
        bench_report.add("loadtest", f"generator at {r['target_rate']:,.0f}/s"
                         + (" + delivery" if r["delivery"] else ""), f"{r['ratio']:.1%}",
                         f"achieved/target calls; dropped_iterations {r['dropped_iterations']:,}, "
                         f"lateness max {r['lateness_max_ms']:.0f} ms")
    bench_report.keep("loadtest.generator", results)


if __name__ == "__main__":
    sys.exit(main())
