"""Caller latency of ``Tracker.track()`` and ``Tracker.identify()``: median and p99, sender idle and delivering.

    .venv/bin/python -m pytest benches/bench_latency.py --benchmark-only -q

Every figure here is per-call timing by pytest-benchmark's pedantic mode: one call per round, timed
with ``time.perf_counter`` around a one-iteration loop, so the timer and that loop are INCLUDED in
each sample (the ``floor`` rows measure exactly that overhead with a no-op function taking the same
arguments). pytest-benchmark's table shows min/median/IQR of the rounds; the p99 comes from the same
rounds (``benchmark.stats.stats.data``) and is printed in the figures summary at the end.

* idle: bursts of ``BURST`` calls; before each, ``flush()`` returned and 10 ms passed, so the sender
  holds nothing when the burst starts.
* delivering: ``BACKLOG`` events are queued first, untimed, then the timed calls run while the
  sender delivers them to the emulator (the queue depth left afterwards is printed: > 0 means the
  sender was busy for the whole measurement).
Customers and properties cycle through a pre-built pool of 1000 (``peers/workload.py``); identify
traits differ per call, so identify dedup skips none of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from peers.clients import CIOTRACK_OPTIONS
from peers.measure import enqueue, percentile
from peers.workload import CUSTOMER_IDS, EVENT_NAME, EVENT_POOL, POOL_SIZE, identify_traits

SITE_ID, API_KEY = "bench-site", "bench-key"
BURST = 500
IDLE_ROUNDS = 20 * BURST
DELIVERING_ROUNDS = 20_000
BACKLOG = 300_000
Args = tuple[tuple[Any, ...], dict[str, Any]]


@pytest.fixture(scope="module")
def tracker(emulator: Any) -> Iterator[Any]:
    import ciotrack

    instance = ciotrack.Tracker(SITE_ID, API_KEY, endpoint=emulator.url, **CIOTRACK_OPTIONS)
    enqueue(instance.track, 0, 20_000)  # warm-up: sender thread, session, connection, allocator
    assert instance.flush(timeout=60)
    yield instance
    instance.close(timeout=30)


@pytest.fixture(autouse=True)
def _fresh_emulator(emulator: Any) -> None:
    # The emulator keeps every event it stores: start each benchmark from an empty one.
    emulator.reset()


def _queued(tracker: Any) -> int:
    core = tracker._core
    return sum(len(core.lane(i)) for i in range(core.lanes))


def _track_args(i: int) -> Args:
    k = i % POOL_SIZE
    return (CUSTOMER_IDS[k], EVENT_NAME, EVENT_POOL[k]), {}


def _identify_args_factory(rounds: int, first: int = 0) -> Callable[[int], Args]:
    traits = [identify_traits(i) for i in range(first, first + rounds + 1)]

    def args(i: int) -> Args:
        return (CUSTOMER_IDS[i % POOL_SIZE], traits[i]), {}

    return args


class _Rounds:
    """pytest-benchmark ``setup``: hands each round its arguments; with ``flush_every``, makes the sender idle."""

    def __init__(self, args: Callable[[int], Args], flush: Callable[[], Any] | None = None, flush_every: int = 0):
        self._args = args
        self._flush = flush
        self._flush_every = flush_every
        self._i = 0

    def __call__(self) -> Args:
        if self._flush is not None and self._i % self._flush_every == 0:
            self._flush()
            time.sleep(0.010)
        args = self._args(self._i)
        self._i += 1
        return args


def _report(benchmark: Any, bench_report: Any, section: str, name: str, meaning: str, **extra: Any) -> None:
    if benchmark.stats is None:  # --benchmark-disable
        return
    data = sorted(benchmark.stats.stats.data)
    median = benchmark.stats.stats.median
    p99 = percentile(data, 0.99)
    benchmark.extra_info.update(median_us=median * 1e6, p99_us=p99 * 1e6, **extra)
    bench_report.add(section, f"{name} median", f"{median * 1e6:.3f} us", meaning)
    bench_report.add(section, f"{name} p99", f"{p99 * 1e6:.3f} us", f"same {len(data):,} rounds")
    bench_report.keep(f"latency.{name}", {"median_us": median * 1e6, "p99_us": p99 * 1e6, "rounds": len(data),
                                           **extra})


def test_floor_noop_call(benchmark: Any, bench_report: Any) -> None:
    def noop(customer_id: str, name: str, data: dict[str, Any]) -> None:
        return None

    benchmark.pedantic(noop, setup=_Rounds(_track_args), rounds=IDLE_ROUNDS, warmup_rounds=1000)
    _report(benchmark, bench_report, "latency floor", "no-op call, same args",
            "timer + loop + a Python call: the floor under every per-call row")


def test_floor_orjson_dumps(benchmark: Any, bench_report: Any) -> None:
    orjson = pytest.importorskip("orjson")
    dumps = orjson.dumps

    def encode(customer_id: str, name: str, data: dict[str, Any]) -> Any:
        return dumps(data)

    benchmark.pedantic(encode, setup=_Rounds(_track_args), rounds=IDLE_ROUNDS, warmup_rounds=1000)
    _report(benchmark, bench_report, "latency floor", "orjson.dumps(5 properties)",
            "encoding alone with the fastest Python JSON library, same timing")


def test_track_idle(benchmark: Any, bench_report: Any, tracker: Any) -> None:
    benchmark.pedantic(tracker.track, setup=_Rounds(_track_args, lambda: tracker.flush(timeout=60), BURST),
                       rounds=IDLE_ROUNDS)
    _report(benchmark, bench_report, "latency", "track() idle",
            f"per call, bursts of {BURST} after flush()+10 ms; timer included")


def test_identify_idle(benchmark: Any, bench_report: Any, tracker: Any) -> None:
    setup = _Rounds(_identify_args_factory(IDLE_ROUNDS), lambda: tracker.flush(timeout=60), BURST)
    benchmark.pedantic(tracker.identify, setup=setup, rounds=IDLE_ROUNDS)
    _report(benchmark, bench_report, "latency", "identify() idle",
            f"per call, bursts of {BURST} after flush()+10 ms; timer included")


def test_track_delivering(benchmark: Any, bench_report: Any, tracker: Any) -> None:
    assert tracker.flush(timeout=60)
    enqueue(tracker.track, 0, BACKLOG)
    queued_before = _queued(tracker)
    benchmark.pedantic(tracker.track, setup=_Rounds(_track_args), rounds=DELIVERING_ROUNDS)
    queued_after = _queued(tracker)
    assert tracker.flush(timeout=120)
    _report(benchmark, bench_report, "latency", "track() delivering",
            f"per call while the sender delivers a {BACKLOG:,}-event backlog (left after: {queued_after:,}); "
            "goal median <= 1 us, p99 <= 5 us",
            queued_before=queued_before, queued_after=queued_after)


def test_identify_delivering(benchmark: Any, bench_report: Any, tracker: Any) -> None:
    assert tracker.flush(timeout=60)
    setup = _Rounds(_identify_args_factory(DELIVERING_ROUNDS))
    enqueue(tracker.track, 0, BACKLOG)
    queued_before = _queued(tracker)
    benchmark.pedantic(tracker.identify, setup=setup, rounds=DELIVERING_ROUNDS)
    queued_after = _queued(tracker)
    assert tracker.flush(timeout=120)
    _report(benchmark, bench_report, "latency", "identify() delivering",
            f"per call while the sender delivers a {BACKLOG:,}-event backlog (left after: {queued_after:,})",
            queued_before=queued_before, queued_after=queued_after)
