"""Never lose an event, at scale: 1M events through a hostile emulator, and what a SIGKILL loses.

    .venv/bin/python benches/bench_chaos.py [--events 1000000] [--senders 4] [--batch-bytes 100000]
                                            [--crash-seconds 3] [--json out.json]

1. **Chaos**: ``--events`` ``track()`` calls (default 1M) from one thread into a tracker with a disk
   spool and default bounds (64 MiB queue: 1M events do not fit, so a burst spills to the spool and is
   replayed), against the emulator in a subprocess answering 20 % 5xx, resetting 5 % of connections,
   applying 10 % of batches and then dropping the connection before the answer, adding latency spikes
   (up to 100 ms), and storming 429s (``Retry-After: 1``) for 2 s mid-run. Printed: wall time,
   events/s, requests and each fault's count, retries, spooled/replayed ops, the ids the emulator saw
   twice (retries carry the same ids) and the verdict: the emulator stored exactly ``--events``
   events (ids are unique per event, and it stores an id once: so each exactly once), ``on_error``
   and ``on_drop`` saw nothing.
2. **SIGKILL**: a child process tracks a steady 10k events/s with default settings (plus a spool) for
   ``--crash-seconds``, prints its counters, and is SIGKILLed at once; run with the API up and with it
   down (nothing listening). Printed: events accepted, delivered, on disk, lost, and what the child's
   last counters said was only in memory (queued, overflowing or in a request): the loss is bounded
   by that, and everything the spool wrote survives.

Nothing here asserts on speed; the script exits non-zero only when an event is lost, duplicated or
reported failed. Under pytest (``make bench``; ``--quick`` runs 100k events) the runs report into the
session's figure summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from typing import Any

import pytest

BENCHES = os.path.dirname(os.path.abspath(__file__))
if BENCHES not in sys.path:
    sys.path.insert(0, BENCHES)

from ciotrack import Tracker  # noqa: E402
from ciotrack.emulator import Emulator  # noqa: E402
from ciotrack.errors import DeliveryError  # noqa: E402
from ciotrack.spool import Spool, spool_directory  # noqa: E402

SITE_ID, API_KEY = "bench-site", "bench-key"
CHAOS: dict[str, Any] = {"error_rate": 0.2, "reset_rate": 0.05, "apply_then_drop_rate": 0.1,
                         "latency": 0.001, "latency_jitter": 0.1, "seed": 5}


def chaos_run(events: int, senders: int, batch_bytes: int) -> dict[str, Any]:
    emulator = Emulator.spawn(workspaces={SITE_ID: API_KEY}, faults=CHAOS)
    errors: list[DeliveryError] = []
    drops: list[tuple[str, int]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ciotrack-chaos-") as spool_dir:
            tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=spool_dir, senders=senders,
                              batch_bytes=batch_bytes, rate_limit=0, backoff_base=0.05, backoff_cap=1.0,
                              on_error=errors.append, on_drop=lambda r, n: drops.append((r, n)))
            started = time.perf_counter()
            for i in range(events):
                tracker.track(f"user-{i % 5000}", "chaos", {"i": i, "plan": "pro", "amount": i % 997})
                if i == events // 2:
                    emulator.storm_429(2.0)
            produced = time.perf_counter() - started
            flushed = tracker.flush(timeout=600)
            stored = emulator.wait_for(lambda: emulator.stats()["events"] >= events, timeout=600)
            elapsed = time.perf_counter() - started
            tracker.close(timeout=60)
            pending_ops = Spool(spool_directory(spool_dir, SITE_ID)).pending()[0]
        server = emulator.stats()
        client = tracker.stats()
        return {
            "events": events, "senders": senders, "batch_bytes": batch_bytes,
            "produce_s": round(produced, 2), "elapsed_s": round(elapsed, 2),
            "events_per_s": round(events / elapsed), "flushed": flushed, "stored_all": stored,
            "stored": server["events"], "duplicates_seen": server["duplicates"], "requests": server["requests"],
            "by_status": server["by_status"], "faults": server["faults"],
            "retried": client.retried, "spooled": client.spooled, "replayed": client.replayed,
            "overflowed": client.overflowed, "delivered": client.delivered, "spool_left": pending_ops,
            "on_error": sum(len(e.ops) for e in errors), "on_drop": sum(n for _, n in drops),
        }
    finally:
        emulator.stop()


def exactly_once(result: dict[str, Any]) -> bool:
    return bool(result["stored"] == result["events"] and result["on_error"] == 0 and result["on_drop"] == 0
                and result["spool_left"] == 0)


CRASH_CHILD = """
import sys, time, ciotrack
endpoint, spool_dir, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
tracker = ciotrack.Tracker({site!r}, {key!r}, endpoint=endpoint, spool_dir=spool_dir)
rate, count = 10_000, int(10_000 * seconds)
started = time.monotonic()
for i in range(count):
    tracker.track(f"k{{i % 50}}", "kill", {{"i": i}})
    if i % 100 == 99:
        time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
s = tracker.stats()
print("stats", s.accepted, s.delivered, s.spooled, flush=True)
time.sleep(600)
"""


def crash_run(api_up: bool, seconds: float) -> dict[str, Any]:
    emulator = Emulator.spawn(workspaces={SITE_ID: API_KEY})
    try:
        with tempfile.TemporaryDirectory(prefix="ciotrack-crash-") as spool_dir:
            if api_up:
                endpoint = emulator.url
            else:
                import socket

                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
            script = textwrap.dedent(CRASH_CHILD.format(site=SITE_ID, key=API_KEY))
            child = subprocess.Popen([sys.executable, "-c", script, endpoint, spool_dir, str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            line = child.stdout.readline()
            child.send_signal(signal.SIGKILL)
            child.wait()
            accepted, delivered_before, spooled_before = map(int, line.split()[1:])
            spool = Spool(spool_directory(spool_dir, SITE_ID))
            on_disk = {json.loads(op)["attributes"]["i"] for segment in spool.claim()
                       for _, ops in segment.records() for op in ops}
            spool.close()
        delivered = emulator.stats()["events"]  # unique ids stored
        return {"api": "up" if api_up else "down", "accepted": accepted, "delivered": delivered,
                "on_disk": len(on_disk), "lost": accepted - delivered - len(on_disk),
                "in_memory_at_last_stats": accepted - delivered_before - spooled_before,
                "spooled_before_kill": spooled_before}
    finally:
        emulator.stop()


def print_chaos(result: dict[str, Any]) -> None:
    faults = result["faults"]
    print(f"chaos: {result['events']:,} events, {result['senders']} senders, {result['batch_bytes']:,} B batches")
    print(f"  wall {result['elapsed_s']} s (calls {result['produce_s']} s), {result['events_per_s']:,} events/s "
          f"delivered end to end")
    print(f"  requests {result['requests']:,}; by status {result['by_status']}")
    print(f"  faults: 5xx {faults['error']}, resets {faults['reset']}, apply-then-drop {faults['apply_then_drop']}, "
          f"429 storm {faults['storm_429']}, latency {faults['latency']}")
    print(f"  client: retried {result['retried']:,}, overflowed {result['overflowed']:,}, spooled "
          f"{result['spooled']:,}, replayed {result['replayed']:,}, delivered {result['delivered']:,}")
    print(f"  emulator: stored {result['stored']:,} events; saw {result['duplicates_seen']:,} ids again "
          f"(retries of applied batches, same ids, stored once)")
    print(f"  on_error {result['on_error']}, on_drop {result['on_drop']}, spool left {result['spool_left']}: "
          f"{'EXACTLY ONCE' if exactly_once(result) else 'FAILED'}")


def print_crash(result: dict[str, Any]) -> None:
    print(f"SIGKILL, API {result['api']}: accepted {result['accepted']:,}, delivered {result['delivered']:,}, "
          f"on disk {result['on_disk']:,}, lost {result['lost']:,} (only in memory at the last stats: "
          f"{result['in_memory_at_last_stats']:,})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batch-bytes", type=int, default=100_000)
    parser.add_argument("--crash-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    chaos = chaos_run(args.events, args.senders, args.batch_bytes)
    print_chaos(chaos)
    crashes = [crash_run(up, args.crash_seconds) for up in (True, False)]
    for crash in crashes:
        print_crash(crash)
    if args.json:
        args.json.write_text(json.dumps({"chaos": chaos, "sigkill": crashes}, indent=1))
    ok = exactly_once(chaos) and all(0 <= c["lost"] <= c["in_memory_at_last_stats"] for c in crashes)
    return 0 if ok else 1


# -- under pytest (``make bench``) -------------------------------------------------------------------

def test_chaos_exactly_once(benchmark: Any, bench_report: Any, quick: bool) -> None:
    events = 100_000 if quick else 1_000_000
    result: dict[str, Any] = {}
    benchmark.pedantic(lambda: result.update(chaos_run(events, 4, 100_000)), rounds=1, iterations=1)
    assert exactly_once(result), result  # correctness, not speed
    benchmark.extra_info.update(result)
    bench_report.add("chaos", f"{events:,} events through faults: events/s", f"{result['events_per_s']:,}",
                     f"20% 5xx, 5% resets, 10% apply-then-drop, latency spikes, 2 s 429 storm; "
                     f"{result['requests']:,} requests, {result['retried']:,} retries")
    bench_report.add("chaos", "stored exactly once", f"{result['stored']:,}",
                     f"on_error 0, on_drop 0; {result['duplicates_seen']:,} ids seen again, stored once; "
                     f"spooled {result['spooled']:,}, replayed {result['replayed']:,}")
    bench_report.keep("chaos.run", result)


@pytest.mark.parametrize("api_up", [True, False], ids=["api_up", "api_down"])
def test_sigkill_loss(benchmark: Any, bench_report: Any, api_up: bool) -> None:
    result: dict[str, Any] = {}
    benchmark.pedantic(lambda: result.update(crash_run(api_up, 3.0)), rounds=1, iterations=1)
    assert 0 <= result["lost"] <= result["in_memory_at_last_stats"], result
    bench_report.add("sigkill", f"API {result['api']}: lost of {result['accepted']:,}", f"{result['lost']:,}",
                     f"10k events/s, default settings + spool; in memory at the kill: "
                     f"{result['in_memory_at_last_stats']:,}; delivered {result['delivered']:,}, "
                     f"on disk {result['on_disk']:,}")
    bench_report.keep(f"sigkill.{result['api']}", result)


if __name__ == "__main__":
    sys.exit(main())
