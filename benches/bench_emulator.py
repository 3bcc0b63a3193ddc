"""Emulator ingest speed: events/s of ~500 KB ``/api/v2/batch`` bodies, server in its own process.

    .venv/bin/python benches/bench_emulator.py [--batches 200] [--connections 2] [--op-bytes 160]

The emulator runs as a subprocess (``Emulator.spawn``) and the client here only writes pre-built
bodies over keep-alive connections, so the figure is the server's: parse, validate and store.
Every event has a distinct ULID, so nothing is skipped as a duplicate; the run fails unless the
emulator's own count of stored events equals what was sent.

Also collected by pytest-benchmark (``test_emulator_ingest``) when ``benches/`` is run with pytest.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import threading
import time
from base64 import b64encode
from typing import Any
from urllib.parse import urlsplit

import orjson

SITE_ID, API_KEY = "bench-site", "bench-key"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_BODY = 500_000


def _ulid(rng: random.Random, millis: int) -> str:
    head = "".join(CROCKFORD[(millis >> shift) & 31] for shift in range(45, -1, -5))
    return head + "".join(rng.choice(CROCKFORD) for _ in range(16))


def make_bodies(count: int, op_bytes: int, seed: int = 7) -> tuple[list[bytes], int]:
    """``count`` distinct batch bodies just under 500 KB, of event ops about ``op_bytes`` each."""
    rng = random.Random(seed)
    base_ms = 1_700_000_000_000
    pad = "x" * max(0, op_bytes - 165)
    bodies: list[bytes] = []
    total = 0
    n = 0
    for _ in range(count):
        ops: list[bytes] = []
        size = len(b'{"batch":[]}')
        while True:
            op = orjson.dumps({"type": "person", "identifiers": {"id": f"u{n % 5000}"}, "action": "event",
                               "name": "checkout", "id": _ulid(rng, base_ms + n),
                               "timestamp": 1_700_000_000 + n % 86400,
                               "attributes": {"total": n % 997, **({"ref": pad} if pad else {})}})
            if size + len(op) + 1 > MAX_BODY:
                break
            ops.append(op)
            size += len(op) + 1
            n += 1
        bodies.append(b'{"batch":[' + b",".join(ops) + b"]}")
        total += len(ops)
    return bodies, total


def _send_all(url: str, bodies: list[bytes], errors: list[str]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    headers = {"Content-Type": "application/json",
               "Authorization": "Basic " + b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()}
    try:
        for body in bodies:
            conn.request("POST", "/api/v2/batch", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                errors.append(f"{response.status} {payload[:200]!r}")
                return
    finally:
        conn.close()


def run_once(emulator: Any, bodies: list[bytes], connections: int) -> float:
    """Send every body over ``connections`` keep-alive connections; returns elapsed seconds."""
    shares = [bodies[i::connections] for i in range(connections)]
    errors: list[str] = []
    threads = [threading.Thread(target=_send_all, args=(emulator.url, share, errors)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"emulator answered: {errors[0]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--op-bytes", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from ciotrack.emulator import Emulator

    bodies, events = make_bodies(args.batches, args.op_bytes)
    mean_op = sum(len(b) for b in bodies) / events
    print(f"{len(bodies)} batches of ~{len(bodies[0]) / 1000:.0f} KB, {events:,} events "
          f"(~{mean_op:.0f} B/op), {args.connections} connections, {os.cpu_count()} CPUs")
    rates: list[float] = []
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as emulator:
        for round_no in range(args.rounds):
            emulator.reset()
            cpu_before = emulator.stats()["process_cpu_seconds"]
            elapsed = run_once(emulator, bodies, args.connections)
            stats = emulator.stats()
            if stats["events"] != events:
                print(f"MISMATCH: sent {events} events, emulator stored {stats['events']}")
                return 1
            rates.append(events / elapsed)
            cpu = stats["process_cpu_seconds"] - cpu_before
            print(f"  round {round_no + 1}: {rates[-1]:,.0f} events/s ({len(bodies) / elapsed:,.0f} batches/s, "
                  f"{sum(map(len, bodies)) / elapsed / 1e6:,.0f} MB/s); server CPU {cpu:.2f} s "
                  f"= {events / cpu:,.0f} events per CPU-second")
    print(f"emulator ingest: median {statistics.median(rates):,.0f} events/s, best {max(rates):,.0f} "
          f"({args.rounds} rounds)")
    return 0


def test_emulator_ingest(benchmark: Any) -> None:
    from ciotrack.emulator import Emulator

    bodies, events = make_bodies(40, 160)
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as emulator:
        benchmark.extra_info["events_per_round"] = events
        benchmark.pedantic(run_once, args=(emulator, bodies, 2), setup=emulator.reset, rounds=5)
        assert emulator.stats()["events"] == events


if __name__ == "__main__":
    raise SystemExit(main())
