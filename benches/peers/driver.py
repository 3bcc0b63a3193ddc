"""Drive one client through one scenario in this (fresh) process and write its figures as JSON.

Run by ``benches/compare_peers.py`` (and ``bench_e2e.py``) with the interpreter of the venv that has
the client installed::

    python benches/peers/driver.py --client segment --url http://127.0.0.1:PORT --scenario main --out r.json

Scenarios:
* ``main``: warm-up, then track()/identify() latency idle, track() latency while delivering,
  end-to-end events/s with CPU per event, and the app-impact loop; against ``--url``, with the
  delivered count read from ``--count-url`` (JSON, key ``--count-key``).
* ``rss``: RSS growth per queued event with delivery stalled (the client points at a socket that never
  accepts). The process then leaves with ``os._exit``: the stalled sender would hold up a normal exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peers import measure  # noqa: E402
from peers.clients import LABELS, BenchClient, open_client  # noqa: E402
from peers.workload import cpu_bound_loop  # noqa: E402


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


def _counter(url: str, key: str, ca_bundle: str | None) -> measure.CountFn:
    context = ssl.create_default_context(cafile=ca_bundle) if url.startswith("https") else None

    def count() -> int:
        with urllib.request.urlopen(url, timeout=30, context=context) as response:
            return int(json.loads(response.read())[key])

    return count


def _open(args: argparse.Namespace, url: str) -> BenchClient:
    return open_client(args.client, url, timeout=args.timeout, site_id=args.site_id, api_key=args.api_key,
                       ca_bundle=args.ca_bundle, ciotrack_options=_parse_options(args.ciotrack_option))


def run_main(args: argparse.Namespace) -> dict[str, Any]:
    client = _open(args, args.url)
    count = _counter(args.count_url, args.count_key, args.ca_bundle)
    figures: dict[str, Any] = {"version": client.version()}
    phases: dict[str, float] = {}
    figures["phase_s"] = phases
    sync = client.synchronous
    clock = time.perf_counter
    mark = clock()

    def phase(name: str) -> None:
        nonlocal mark
        now = clock()
        phases[name] = now - mark
        mark = now

    # Warm-up: imports, sessions, connections, sender threads, the allocator's pools.
    measure.enqueue(client.track, 0, 50 if sync else 5000)
    client.flush()
    figures["timer_overhead_ns"] = measure.timer_overhead_ns(100_000)
    figures["noop_track_ns"] = measure.noop_track_ns(100_000)
    phase("warmup")

    bursts, burst_size = (1, args.sync_calls) if sync else (args.idle_bursts, args.burst_size)
    figures["track_idle"] = measure.latency_idle(client, "track", bursts, burst_size)
    phase("track_idle")
    figures["identify_idle"] = measure.latency_idle(client, "identify", bursts, burst_size)
    phase("identify_idle")
    if not sync:
        figures["track_delivering"] = measure.latency_delivering(
            client, "track", args.delivering_calls, args.delivering_backlog)
        phase("track_delivering")
    e2e = measure.end_to_end(client, args.sync_events if sync else args.events, count)
    figures["e2e"] = e2e
    phase("e2e")
    if not sync and args.loop_iterations > 0:
        t0 = clock()
        cpu_bound_loop(args.loop_iterations)
        loop_s = clock() - t0
        # Enough backlog to keep the sender busy for ~3 loop lengths at its end-to-end rate.
        backlog = int(min(max(e2e["events_per_s"] * loop_s * 3, 20_000), 2_000_000))
        figures["app_impact"] = measure.app_impact(client, args.loop_iterations, backlog, count)
        phase("app_impact")
    client.close()
    phase("close")
    return figures


def run_rss(args: argparse.Namespace) -> dict[str, Any]:
    blackhole = measure.Blackhole()
    client = _open(args, blackhole.url)
    if client.synchronous:
        return {"version": client.version(), "rss": None}
    return {"version": client.version(), "rss": measure.rss_growth(client, args.rss_events)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="drive one benchmarked client")
    parser.add_argument("--client", required=True, choices=sorted(LABELS))
    parser.add_argument("--scenario", required=True, choices=("main", "rss"))
    parser.add_argument("--url", default="", help="receiver base URL (main scenario)")
    parser.add_argument("--count-url", default="", help="JSON endpoint with the receiver's delivered count")
    parser.add_argument("--count-key", default="events")
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--site-id", default="bench-site")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--ca-bundle")
    parser.add_argument("--ciotrack-option", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--idle-bursts", type=int, default=20)
    parser.add_argument("--burst-size", type=int, default=500)
    parser.add_argument("--delivering-calls", type=int, default=20_000)
    parser.add_argument("--delivering-backlog", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sync-calls", type=int, default=300)
    parser.add_argument("--sync-events", type=int, default=1000)
    parser.add_argument("--loop-iterations", type=int, default=4_000_000)
    parser.add_argument("--rss-events", type=int, default=100_000)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    figures = run_main(args) if args.scenario == "main" else run_rss(args)
    figures.update(client=args.client, label=LABELS[args.client], scenario=args.scenario,
                   python=platform.python_version(), wall_s=time.perf_counter() - started)
    with open(args.out, "w") as out:
        json.dump(figures, out)
    if args.scenario == "rss":
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
