"""ciotrack end to end: events/s to the emulator's count, CPU per event, RSS per queued event, app impact.

    .venv/bin/python -m pytest benches/bench_e2e.py --benchmark-only -q [--quick]

These are composite figures: pytest-benchmark times each whole scenario once (``rounds=1``, so its
table shows the scenario's wall time), and the figures themselves are printed in the summary at the
end of the run (and kept in ``extra_info`` and ``.benchmarks/figures-*.json``). The measurement code
is shared with the peer comparison (``peers/measure.py``), so ciotrack's figures here and there mean
the same thing; here ciotrack delivers to the Customer.io emulator (a subprocess), there to the
peers' sink. The tracker runs with ``peers.clients.CIOTRACK_OPTIONS``: no token bucket (the local
receiver does not rate-limit) and a queue large enough that no scenario drops an event.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from peers import measure
from peers.clients import BenchClient, CiotrackClient

SITE_ID, API_KEY = "bench-site", "bench-key"
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "driver.py")
LOOP_ITERATIONS = 4_000_000


@pytest.fixture
def client(emulator: Any) -> Iterator[BenchClient]:
    emulator.reset()
    instance = CiotrackClient(emulator.url, 60.0, SITE_ID, API_KEY, {})
    measure.enqueue(instance.track, 0, 20_000)  # warm-up: sender thread, session, connection
    instance.flush()
    yield instance
    instance.close()
    emulator.reset()  # the emulator keeps what it stores: free it for the next scenario


@pytest.fixture
def sink_client(sink: Any) -> Iterator[BenchClient]:
    instance = CiotrackClient(sink.url, 60.0, SITE_ID, API_KEY, {})
    measure.enqueue(instance.track, 0, 20_000)
    instance.flush()
    yield instance
    instance.close()


def _emulator_count(emulator: Any) -> Callable[[], int]:
    return lambda: int(emulator.stats()["operations"])


def _end_to_end(events: int, benchmark: Any, bench_report: Any, client: BenchClient, count: Callable[[], int],
                receiver: str = "emulator") -> None:
    result: dict[str, float] = {}

    def run() -> None:
        result.update(measure.end_to_end(client, events, count))

    benchmark.pedantic(run, rounds=1, iterations=1)
    # Correctness, not speed: every event the client accepted reached the receiver.
    assert result["delivered"] == events, result
    benchmark.extra_info.update(result)
    name = f"{events:,} events" + ("" if receiver == "emulator" else f" to the {receiver}")
    bench_report.add("end to end", f"{name}: events/s", f"{result['events_per_s']:,.0f}",
                     f"first track() call -> flush() returned, {receiver} counted all"
                     + ("; goal >= 300k/s (1M)" if receiver == "emulator" else ": the client without the "
                        "emulator's validation and state"))
    bench_report.add("end to end", f"{name}: calls/s", f"{result['calls_per_s']:,.0f}",
                     "the caller's loop of track() calls alone")
    bench_report.add("end to end", f"{name}: client CPU per event", f"{result['cpu_us_per_event']:.2f} us",
                     "process CPU (user+sys, caller+sender) over the same window / delivered; goal <= 3 us")
    bench_report.keep(f"e2e.{receiver}.{events}", result)


def test_end_to_end_100k(benchmark: Any, bench_report: Any, client: BenchClient, emulator: Any, quick: bool) -> None:
    _end_to_end(20_000 if quick else 100_000, benchmark, bench_report, client, _emulator_count(emulator))


def test_end_to_end_1m(benchmark: Any, bench_report: Any, client: BenchClient, emulator: Any, quick: bool) -> None:
    _end_to_end(100_000 if quick else 1_000_000, benchmark, bench_report, client, _emulator_count(emulator))


def test_end_to_end_1m_sink(benchmark: Any, bench_report: Any, sink_client: BenchClient, sink: Any,
                            quick: bool) -> None:
    """The same 1M run to the lean sink of the peer comparison: how much of the figure is the emulator's."""
    _end_to_end(100_000 if quick else 1_000_000, benchmark, bench_report, sink_client, sink.events, "sink")


def test_rss_per_queued_event(benchmark: Any, bench_report: Any, quick: bool) -> None:
    """In a fresh process (the peer driver's ``rss`` scenario) delivering to a socket that never answers."""
    events = 50_000 if quick else 300_000
    result: dict[str, Any] = {}

    def run() -> None:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, DRIVER, "--client", "ciotrack", "--scenario", "rss",
                            "--rss-events", str(events), "--out", out.name], check=True, timeout=300)
            with open(out.name) as figures:
                result.update(json.load(figures)["rss"])

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    bench_report.add("memory", "RSS growth per queued event", f"{result['bytes_per_event']:,.0f} bytes",
                     f"{events:,} 5-property events queued, delivery stalled "
                     f"({result['queued_after']:,.0f} still queued); goal <= 400 bytes")
    bench_report.keep("rss", result)


APP_IMPACT_RATES = {"unlimited": None, "fixed rate": 27.0}
"""``rate_limit`` of each app-impact run: none (the client delivers as fast as it can), and 27 requests/s,
which with the bench's 2,089-operation batches is ~56k events/s: the issue's goal is stated at >= 50k/s."""


@pytest.mark.parametrize("pace", list(APP_IMPACT_RATES))
def test_app_impact(benchmark: Any, bench_report: Any, emulator: Any, quick: bool, pace: str) -> None:
    iterations = LOOP_ITERATIONS // 2 if quick else LOOP_ITERATIONS
    backlog = 100_000 if quick else 300_000  # about 3 loop lengths of delivery: it must outlast the loop
    repeats = 2 if quick else 5
    rate = APP_IMPACT_RATES[pace]
    result: dict[str, float] = {}
    emulator.reset()
    options = {} if rate is None else {"rate_limit": rate, "rate_burst": 2.0}
    client = CiotrackClient(emulator.url, 60.0, SITE_ID, API_KEY, options)
    try:
        measure.enqueue(client.track, 0, 20_000)  # warm-up: sender thread, session, connection
        client.flush()

        def run() -> None:
            result.update(measure.app_impact(client, iterations, backlog, _emulator_count(emulator), repeats))

        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        client.close()
        emulator.reset()
    benchmark.extra_info.update(result)
    where = "no rate limit" if rate is None else f"rate_limit={rate:g} requests/s"
    section = f"app impact ({where})"
    bench_report.add(section, "CPU loop slowdown while delivering", f"{result['slowdown']:.3f}x",
                     f"median of {repeats} wall times of a fixed {iterations:,}-iteration pure-Python loop with "
                     f"the sender delivering a {backlog:,}-event backlog / alone ({result['loop_alone_s']:.3f} s); "
                     "goal <= 1.05x while delivering >= 50k events/s")
    bench_report.add(section, "events/s delivered during the loop", f"{result['events_per_s_during_loop']:,.0f}",
                     f"emulator count gained during the loop / its wall time (backlog left at the end: "
                     f"{result['queued_after_min']:,.0f}, > 0 = busy throughout)")
    bench_report.add(section, "loop time lost per delivered event", f"{result['loop_us_lost_per_event']:.2f} us",
                     "(median loop with - alone) / events delivered during the loop")
    bench_report.keep("app_impact" if rate is None else "app_impact_fixed_rate", result)
