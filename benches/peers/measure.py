"""The measurements, identical for every client. Standard library only.

Conventions (the README repeats them next to each figure):
* per-call latency: ``time.perf_counter_ns()`` read right before and after the one call; the timer's
  own cost (``timer_overhead_ns``, ~40-60 ns here) is INCLUDED in every sample, not subtracted;
* "idle": ``flush()`` returned and 10 ms passed before each burst of calls, so the sender has nothing
  in hand when the burst starts (what it does during the burst is the client's own design);
* "delivering": a backlog is queued first (untimed) and the timed calls run while the sender works
  through it; ``queued_after`` > 0 proves the sender still had work when the last timed call ended;
* CPU: ``time.process_time()`` (user + system, every thread of the client process) over a window;
* RSS: resident set size from ``/proc/self/statm`` after ``gc.collect()``.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from peers.clients import BenchClient, IdentifyFn, TrackFn
from peers.workload import CUSTOMER_IDS, EVENT_NAME, EVENT_POOL, POOL_SIZE, cpu_bound_loop, identify_traits

IDLE_SETTLE_S = 0.010
CountFn = Callable[[], int]


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already-sorted samples."""
    if not sorted_samples:
        return float("nan")
    index = min(len(sorted_samples) - 1, max(0, math.ceil(q * len(sorted_samples)) - 1))
    return float(sorted_samples[index])


def summarize_ns(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": float(len(ordered)), "median_ns": float(statistics.median(ordered)),
            "p99_ns": percentile(ordered, 0.99), "mean_ns": statistics.fmean(ordered)}


def timer_overhead_ns(samples: int = 200_000) -> float:
    """Median of two back-to-back ``perf_counter_ns()`` reads: the floor under every per-call sample."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(samples):
        t0 = clock()
        out.append(clock() - t0)
    return float(statistics.median(out))


def noop_track_ns(samples: int = 200_000) -> float:
    """Median per-call time of a no-op Python function called like ``track`` (timer included)."""
    def noop(customer_id: str, name: str, properties: dict[str, Any]) -> None:
        return None

    out: list[int] = []
    _time_track_calls(noop, 0, samples, out)
    return float(statistics.median(out))


def _time_track_calls(track: TrackFn, first: int, count: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    ids = CUSTOMER_IDS
    pool = EVENT_POOL
    name = EVENT_NAME
    append = out.append
    for i in range(first, first + count):
        k = i % POOL_SIZE
        customer_id = ids[k]
        properties = pool[k]
        t0 = clock()
        track(customer_id, name, properties)
        append(clock() - t0)


def _time_identify_calls(identify: IdentifyFn, traits: list[dict[str, Any]], first: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    ids = CUSTOMER_IDS
    append = out.append
    for i, attributes in enumerate(traits, first):
        customer_id = ids[i % POOL_SIZE]
        t0 = clock()
        identify(customer_id, attributes)
        append(clock() - t0)


def enqueue(track: TrackFn, first: int, count: int) -> None:
    """Untimed calls (backlogs, warm-up)."""
    ids = CUSTOMER_IDS
    pool = EVENT_POOL
    name = EVENT_NAME
    for i in range(first, first + count):
        k = i % POOL_SIZE
        track(ids[k], name, pool[k])


def fill_backlog(client: BenchClient, target: int, chunk: int = 1000) -> int:
    """Untimed track() calls until the client holds ``target`` queued events; returns the calls made.

    A queue-based peer's sender drains while the caller fills (at times as fast as the caller can
    call), so a fixed number of calls does not make a backlog: the client's own depth is checked.
    Gives up after ``20 * target`` calls (the result's ``queued_*`` fields then show it).
    """
    calls = 0
    while calls < 20 * target:
        enqueue(client.track, calls, chunk)
        calls += chunk
        depth = client.queue_depth()
        if depth >= target or (depth < 0 and calls >= target):
            break
    return calls


def latency_idle(client: BenchClient, op: str, bursts: int, burst_size: int) -> dict[str, float]:
    """Per-call latency of ``track`` or ``identify`` in bursts, each started with the sender idle."""
    samples: list[int] = []
    for burst in range(bursts):
        client.flush()
        if not client.synchronous:
            time.sleep(IDLE_SETTLE_S)
        first = burst * burst_size
        if op == "track":
            _time_track_calls(client.track, first, burst_size, samples)
        else:
            traits = [identify_traits(i) for i in range(first, first + burst_size)]
            _time_identify_calls(client.identify, traits, first, samples)
    client.flush()
    return summarize_ns(samples)


def latency_delivering(client: BenchClient, op: str, calls: int, backlog: int) -> dict[str, float]:
    """Per-call latency while the sender delivers a backlog queued just before."""
    client.flush()
    traits = [identify_traits(i) for i in range(calls)] if op == "identify" else []
    fill_backlog(client, backlog)
    queued_before = client.queue_depth()
    samples: list[int] = []
    if op == "track":
        _time_track_calls(client.track, backlog, calls, samples)
    else:
        _time_identify_calls(client.identify, traits, backlog, samples)
    queued_after = client.queue_depth()
    client.flush()
    result = summarize_ns(samples)
    result.update(backlog=float(backlog), queued_before=float(queued_before), queued_after=float(queued_after))
    return result


def end_to_end(client: BenchClient, events: int, count_delivered: CountFn) -> dict[str, float]:
    """``events`` track() calls from the first call until flush() returns; the receiver's count must match.

    ``events_per_s`` is delivered events over that wall time; ``cpu_us_per_event`` is the process's
    CPU time over the same window (caller and sender threads, plus the caller's loop, which costs
    about what ``noop_track_ns`` says) divided by delivered events.
    """
    client.flush()
    base = count_delivered()
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    enqueue(client.track, 0, events)
    t_calls = time.perf_counter()
    client.flush()
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    delivered = count_delivered() - base
    seconds = t1 - t0
    return {"events": float(events), "delivered": float(delivered), "seconds": seconds,
            "calls_per_s": events / (t_calls - t0), "events_per_s": delivered / seconds if delivered else 0.0,
            "cpu_us_per_event": (cpu1 - cpu0) / max(delivered, 1) * 1e6}


def app_impact(client: BenchClient, loop_iterations: int, backlog: int, count_delivered: CountFn,
               repeats: int = 3) -> dict[str, float]:
    """The app's fixed CPU-bound loop alone (sender idle) vs while the sender delivers a backlog.

    ``slowdown`` = median loop wall time with delivery / median alone. ``events_per_s_during_loop``:
    the receiver's count gained during the loop over the loop's wall time. ``loop_us_lost_per_event``:
    the loop time lost (median with - median alone) over the events delivered meanwhile: what one
    delivered event cost the app. ``queued_after_min`` > 0 proves the backlog lasted the whole loop
    in every repeat.
    """
    alone: list[float] = []
    loaded: list[float] = []
    rates: list[float] = []
    queued_before: list[int] = []
    queued_after: list[int] = []
    for _ in range(repeats):
        client.flush()
        time.sleep(IDLE_SETTLE_S)
        gc.collect()
        t0 = time.perf_counter()
        cpu_bound_loop(loop_iterations)
        alone.append(time.perf_counter() - t0)

        fill_backlog(client, backlog)
        queued_before.append(client.queue_depth())
        before = count_delivered()
        t0 = time.perf_counter()
        cpu_bound_loop(loop_iterations)
        elapsed = time.perf_counter() - t0
        queued_after.append(client.queue_depth())
        gained = count_delivered() - before
        loaded.append(elapsed)
        rates.append(gained / elapsed)
    client.flush()
    loop_alone = statistics.median(alone)
    loop_loaded = statistics.median(loaded)
    rate = statistics.median(rates)
    # What delivering one event cost the app: the loop time lost, spread over the events delivered meanwhile.
    lost_us_per_event = max(loop_loaded - loop_alone, 0.0) / max(rate * loop_loaded, 1.0) * 1e6
    return {"loop_alone_s": loop_alone, "loop_delivering_s": loop_loaded, "slowdown": loop_loaded / loop_alone,
            "events_per_s_during_loop": rate, "loop_us_lost_per_event": lost_us_per_event, "backlog": float(backlog),
            "queued_before_min": float(min(queued_before)), "queued_after_min": float(min(queued_after))}


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    import resource

    return resident_pages * resource.getpagesize()


def pin_receiver(pid: int) -> int | None:
    """Pin every thread of the receiver process ``pid`` to the last CPU we may use; returns that CPU.

    The receiver stands in for a server on another machine. Left free, the scheduler sometimes puts
    it on the core of the app's thread, and the app-impact figure then swings by +-30 % between runs
    (measured: 0.96-1.63x unpinned, 0.99-1.15x pinned, same client). Pinned, it only ever competes
    with the client's sender for its core. The client itself stays free. Threads the receiver
    creates later inherit the pin from the (pinned) thread that creates them. Does nothing on one CPU.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    cpu = allowed[-1]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except ProcessLookupError:  # a thread that just ended
            pass
    return cpu


class Blackhole:
    """A listening socket on 127.0.0.1 that never accepts: connections complete in the kernel backlog,
    requests are written into socket buffers, and no answer ever comes. Delivery stalls without any
    server thread, retry or error, until the client's own timeout."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        host, port = self._socket.getsockname()
        self.url = f"http://{host}:{port}"

    def close(self) -> None:
        self._socket.close()


def wait_until_stable(read: Callable[[], int], quiet_s: float = 0.5, deadline_s: float = 15.0) -> int:
    """Poll ``read`` until its value has not changed for ``quiet_s`` (or the deadline passes)."""
    end = time.monotonic() + deadline_s
    value = read()
    since = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now_value = read()
        if now_value != value:
            value, since = now_value, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return value


def rss_growth(client: BenchClient, events: int, warmup: int = 500) -> dict[str, float]:
    """RSS growth per queued event while delivery is stalled (``client`` must point at a Blackhole).

    A warm-up of ``warmup`` events makes the sender take its first batch and block on it, and lets
    lazily built state (sessions, threads, buffers) exist before the baseline is read. Then
    ``events`` track() calls, each with its own freshly built properties dict (as a real app passes),
    and the growth is read again. Run it in a fresh process: memory freed earlier would be reused.
    """
    from peers.workload import event_properties

    enqueue(client.track, 0, warmup)
    wait_until_stable(client.queue_depth)
    gc.collect()
    before = rss_bytes()
    queued_before = client.queue_depth()
    track = client.track
    ids = CUSTOMER_IDS
    for i in range(events):
        track(ids[i % POOL_SIZE], EVENT_NAME, event_properties(i))
    gc.collect()
    after = rss_bytes()
    queued_after = client.queue_depth()
    return {"events": float(events), "rss_before": float(before), "rss_after": float(after),
            "bytes_per_event": (after - before) / events, "queued_before": float(queued_before),
            "queued_after": float(queued_after)}
