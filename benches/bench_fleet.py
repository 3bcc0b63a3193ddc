"""Fleet mode figures: producer-side ``track()`` latency with the Redis destination, end-to-end events/s
through Redis without a rate limit, and fleet throughput as workers go 1 -> 2 -> 4 at 100 ms latency
until the workspace limit binds. Needs ``redis-server`` on PATH (started here on a free port).

* ``python -m pytest benches/bench_fleet.py --benchmark-only`` — ``track()`` latency (pytest-benchmark
  median per call, 2000 rounds x 100 calls), the same harness as bench_track.py but with
  ``redis_url=``: the call never waits for Redis.
* ``python benches/bench_fleet.py [--quick]`` — the end-to-end, scaling and coalescing figures, printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.fleet.fleet_procs import API_KEY, SITE_ID, WorkerProcess, spawn_producer, wait_producer  # noqa: E402
from tests.redis_harness import RedisServer  # noqa: E402 (after the sys.path insert)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def test_track_with_redis_destination(benchmark: Any, redis_url: str) -> None:
    import ciotrack

    tracker = ciotrack.Tracker(SITE_ID, redis_url=redis_url)
    data = {"total": 12.5, "currency": "EUR", "items": 3, "first": True, "cart": {"sku": "sku-1", "qty": 2}}
    tracker.track("warm-up", "checkout", data)
    try:
        benchmark.pedantic(tracker.track, args=("user-42", "checkout", data), rounds=2000, iterations=100,
                           warmup_rounds=5)
        assert tracker.flush(timeout=120)
    finally:
        tracker.close(timeout=30)
    stats = tracker.stats()
    assert stats.destination == "redis" and stats.delivered == stats.accepted


# -- the printed figures -------------------------------------------------------------------------


def _requests(em: Any) -> int:
    return sum(int(v) for v in em.stats()["by_status"].values())


def end_to_end(redis_url: str, events_per_producer: int, log_dir: Path) -> None:
    from ciotrack.emulator import Emulator

    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        workers = [WorkerProcess(redis_url, em.url, "--rate-limit", "0", log=log_dir / f"e2e{i}.log")
                   for i in range(2)]
        time.sleep(2.0)  # worker start-up is not part of the figure
        total = 2 * events_per_producer
        producers = [spawn_producer(redis_url, p, events_per_producer, 0.0) for p in range(2)]
        # From the first event stored to the last (producer process start-up is not part of the figure).
        em.wait_for(lambda: em.stats()["events"] > 0, timeout=120)
        first = time.monotonic()
        for proc in producers:
            wait_producer(proc, timeout=600)
        em.wait_events(total, timeout=600)
        elapsed = time.monotonic() - first
        for worker in workers:
            worker.terminate()
        print(f"end to end, no rate limit: {total} events in {elapsed:.2f} s = {total / elapsed:,.0f} events/s "
              f"(2 producer processes -> Redis -> 2 workers -> emulator; {_requests(em)} requests)")


# (workers, --concurrency or None for the default, emulator latency, pacing flags or () for the defaults)
SCALING_ROWS: tuple[tuple[int, int | None, float, tuple[str, ...]], ...] = (
    # 1 -> 2 -> 4 workers of 4 threads at 100 ms (4 / 0.1 s = 40 req/s each at most) ...
    (1, 4, 0.1, ()), (2, 4, 0.1, ()), (4, 4, 0.1, ()),
    # ... then enough threads for the limit to bind at 100 ms, then the setting (3 workers, 50 ms),
    (4, 12, 0.1, ()), (3, None, 0.05, ()),
    # and the same with other pacings: the first default, 99/s (refills the burst at 1/s), the old bench setting.
    (3, None, 0.05, ("--rate-limit", "100", "--burst", "10")), (3, None, 0.05, ("--rate-limit", "99", "--burst", "2")),
    (3, None, 0.05, ("--rate-limit", "95", "--burst", "5")),
)


def _preload(redis_url: str, entries: int, ops_per_entry: int) -> None:
    """``entries`` small entries, as many producers flushing often would write them (pipelined XADDs)."""
    import json

    from ciotrack.fleet.producer import connect
    from ciotrack.fleet.streams import StreamKeys, encode_entry, ensure_group

    keys = StreamKeys.for_site(SITE_ID)
    client = connect(redis_url)
    ensure_group(client, keys)
    for start in range(0, entries, 1000):
        pipe = client.pipeline(transaction=False)
        for b in range(start, min(entries, start + 1000)):
            ops = [{"type": "person", "action": "event", "identifiers": {"id": f"u{b}"}, "name": "bench",
                    "id": f"{b:013d}{i:013d}", "attributes": {"b": b, "i": i}} for i in range(ops_per_entry)]
            pipe.xadd(keys.work, encode_entry(json.dumps({"batch": ops}).encode(), "us", "bench:0:x"))  # type: ignore[arg-type]
        pipe.execute()
    client.close()


def coalescing(redis_url: str, seconds: float, log_dir: Path) -> None:
    """Events/s through 3 workers (default pacing, 50 ms latency, the emulator enforcing 100/s burst 10)
    from a backlog of small entries, with and without coalescing. Without, the figure is the steady
    rate over ``seconds``; with, the backlog (the same size) drains long before the rate limit binds,
    so the figure is its size over the time to drain it."""
    from ciotrack.emulator import Emulator
    from ciotrack.fleet.producer import connect
    from ciotrack.fleet.streams import StreamKeys

    keys = StreamKeys.for_site(SITE_ID)
    client = connect(redis_url)
    entries, per_entry = 20_000, 5
    for flags in (("--no-coalesce",), ()):
        client.delete(keys.work, keys.dead, keys.tries)
        _preload(redis_url, entries, per_entry)
        with Emulator.spawn(workspaces={SITE_ID: API_KEY}, rate_limit=100, burst=10) as em:
            em.set_faults(latency=0.05)
            workers = [WorkerProcess(redis_url, em.url, *flags, log=log_dir / f"c{i}.log") for i in range(3)]
            em.wait_for(lambda: em.stats()["events"] > 0, timeout=60)
            t0, events0, requests0 = time.monotonic(), em.stats()["events"], _requests(em)
            deadline = t0 + (seconds if flags else 600.0)
            while time.monotonic() < deadline and client.xlen(keys.work):
                time.sleep(0.05)
            t1, events1, requests1 = time.monotonic(), em.stats()["events"], _requests(em)
            rejected = int(em.stats()["by_status"].get("429", 0))
            left = client.xlen(keys.work)
            for worker in workers:
                worker.terminate()
        rps, eps = (requests1 - requests0) / (t1 - t0), (events1 - events0) / (t1 - t0)
        print(f"{entries:,} entries of {per_entry} operations, 3 workers at 50 ms, "
              f"{' '.join(flags) or 'coalescing (default)'}: {eps:8,.0f} events/s over {t1 - t0:.1f} s, "
              f"{rps:5.1f} requests/s, {eps / max(rps, 1e-9):6.1f} operations per request (429s: {rejected}; "
              f"entries left: {left:,})", flush=True)
    client.close()


def scaling(redis_url: str, seconds: float, log_dir: Path) -> None:
    from ciotrack.emulator import Emulator
    from ciotrack.fleet.producer import connect
    from ciotrack.fleet.settings import DEFAULT_BURST, DEFAULT_RATE_LIMIT, WorkerConfig
    from ciotrack.fleet.streams import StreamKeys

    keys = StreamKeys.for_site(SITE_ID)
    client = connect(redis_url)
    for n_workers, concurrency, latency, pacing in SCALING_ROWS:
        client.delete(keys.work, keys.dead, keys.tries)
        _preload(redis_url, int(110 * (seconds + 6)), 5)
        threads = concurrency or WorkerConfig("", "", "").threads
        extra = [*pacing, *(("--concurrency", str(concurrency)) if concurrency else ())]
        with Emulator.spawn(workspaces={SITE_ID: API_KEY}, rate_limit=100, burst=10) as em:
            em.set_faults(latency=latency)
            # One request per entry: these rows are about the request pacing (coalescing: see below).
            workers = [WorkerProcess(redis_url, em.url, *extra, "--no-coalesce", log=log_dir / f"s{n_workers}-{i}.log")
                       for i in range(n_workers)]
            time.sleep(4.0)  # start-up and the initial burst are not part of the figure
            before, t0 = _requests(em), time.monotonic()
            time.sleep(seconds)
            done, t1 = _requests(em), time.monotonic()
            rps = (done - before) / (t1 - t0)
            rejected = int(em.stats()["by_status"].get("429", 0))
            for worker in workers:
                worker.terminate()
        shared = (f"--rate-limit {pacing[1]} --burst {pacing[3]}" if pacing else
                  f"default pacing: {DEFAULT_RATE_LIMIT:g}/s burst {DEFAULT_BURST:g}")
        print(f"{n_workers} worker(s) x {threads} threads at {latency * 1000:.0f} ms: {rps:6.1f} requests/s = "
              f"{rps:5.1f} % of the 100 req/s ceiling ({shared}; 429s in the whole run: {rejected})", flush=True)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
            print(f"redis-server {version.removeprefix('v=')}, appendfsync always; python {sys.version.split()[0]}")
            end_to_end(server.url, 10_000 if args.quick else 50_000, Path(directory))
            scaling(server.url, 4.0 if args.quick else 10.0, Path(directory))
            coalescing(server.url, 4.0 if args.quick else 8.0, Path(directory))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
