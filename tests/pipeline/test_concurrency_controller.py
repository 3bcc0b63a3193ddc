"""The adaptive concurrency controller's decisions, driven by a simulated receiver and a fake clock.

The simulation is a discrete-event model of what the pipeline does: whenever the controller grants a
slot and the token bucket has a token, a request starts; it completes ``latency`` seconds later (a 429
when the receiver's own limit is exceeded). No thread, no sleep: the clock is the simulation's.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable

import pytest

from ciotrack.concurrency import AdaptiveConcurrency, FixedConcurrency


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Simulation:
    """A sender with endless demand against a receiver of ``latency`` s behind a ``rate``/s bucket."""

    def __init__(self, controller: AdaptiveConcurrency, clock: FakeClock, *, rate: float, burst: float,
                 latency: Callable[[float], float], throttle: Callable[[float], bool] = lambda t: False) -> None:
        self.c = controller
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.latency = latency
        self.throttle = throttle
        self.done: list[tuple[float, bool, float]] = []  # (time, throttled, rtt)
        self.max_seen = 0
        self._events: list[tuple[float, float, bool]] = []  # (end, rtt, throttled)

    def run(self, until: float, step: float = 0.001) -> None:
        clock = self.clock
        while clock.now < until:
            clock.now += step
            self.tokens = min(self.burst, self.tokens + self.rate * step)
            while self._events and self._events[0][0] <= clock.now:
                _, rtt, throttled = heapq.heappop(self._events)
                self.c.observe(rtt, throttled=throttled, demand=True, rate_bound=self.tokens < 1, rate=self.rate)
                self.c.release()
                self.done.append((clock.now, throttled, rtt))
            while self.tokens >= 1 and self.c.try_acquire():
                self.tokens -= 1
                self.c.sending(demand=True)  # as the delivery loop does once it has its token
                self.max_seen = max(self.max_seen, self.c.in_flight)
                rtt = self.latency(clock.now)
                heapq.heappush(self._events, (clock.now + rtt, rtt, self.throttle(clock.now)))

    def rate_between(self, start: float, end: float) -> float:
        ok = sum(1 for t, throttled, _ in self.done if start <= t < end and not throttled)
        return ok / (end - start)


@pytest.mark.parametrize("latency", [0.001, 0.1, 0.3])
def test_grows_until_the_rate_limit_binds(latency: float) -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock)
    sim = Simulation(controller, clock, rate=100, burst=5, latency=lambda t: latency)
    sim.run(10.0)
    # Little's law: 100/s x latency in flight are needed; the controller found them.
    assert sim.rate_between(5.0, 10.0) >= 97
    assert controller.limit >= min(controller.max_limit, int(100 * latency))
    # ... and did not run away: Little's law (100/s x latency, x 1.5, + 1) caps it.
    assert controller.limit <= int(100 * latency * 1.5) + 2


def test_never_exceeds_max_in_flight() -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, max_limit=8)
    sim = Simulation(controller, clock, rate=1000, burst=50, latency=lambda t: 0.3)
    sim.run(5.0)
    assert sim.max_seen == 8
    assert controller.limit == 8
    assert sim.rate_between(2.0, 5.0) == pytest.approx(8 / 0.3, rel=0.05)


def test_follows_a_latency_step() -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock)

    def latency(t: float) -> float:
        return 0.3 if 10.0 <= t < 20.0 else 0.03

    sim = Simulation(controller, clock, rate=100, burst=5, latency=latency)
    sim.run(10.0)
    before = controller.limit
    sim.run(20.0)
    slow = controller.limit
    sim.run(30.0)
    # At 30 ms three or four slots fill 100/s; at 300 ms thirty are needed, then few again.
    assert before <= 10
    assert slow >= 30
    assert sim.rate_between(14.0, 20.0) >= 95
    assert sim.rate_between(24.0, 30.0) >= 95


def test_backs_off_when_latency_rises_without_demand_for_more() -> None:
    """Queueing at the receiver (latency grows with what we send) makes the gradient shrink the limit."""
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, initial=20, tolerance=1.5)
    for _ in range(50):  # a baseline at 20 ms
        assert controller.try_acquire()
        clock.now += 0.02
        controller.observe(0.02, demand=False)
        controller.release()
    assert controller.limit == 20
    for _ in range(10):  # now ten times slower
        controller.try_acquire()
        clock.now += 0.2
        controller.observe(0.2, demand=False)
        controller.release()
    assert controller.limit < 20


def test_halves_on_429_once_per_round_trip() -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, initial=16)
    for _ in range(10):
        controller.try_acquire()
    controller.observe(0.1)  # a latency sample sets the round trip
    limit = controller.limit
    controller.observe(None, throttled=True)
    assert controller.limit == limit // 2
    controller.observe(None, throttled=True)  # the same burst of 429s: no second halving
    assert controller.limit == limit // 2
    clock.now += 1.0
    controller.observe(None, throttled=True)
    assert controller.limit == limit // 4


def test_a_429_storm_then_recovery_costs_few_429s() -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock)
    sim = Simulation(controller, clock, rate=100, burst=5, latency=lambda t: 0.1,
                     throttle=lambda t: 5.0 <= t < 7.0)
    sim.run(15.0)
    after_storm = [t for t, throttled, _ in sim.done if throttled and t >= 7.2]
    assert after_storm == []
    assert sim.rate_between(10.0, 15.0) >= 95


def test_fixed_concurrency_is_a_hard_cap() -> None:
    fixed = FixedConcurrency(3)
    assert [fixed.try_acquire() for _ in range(4)] == [True, True, True, False]
    fixed.observe(0.1, throttled=True)
    fixed.release()
    assert fixed.limit == 3 and fixed.in_flight == 2
    assert fixed.try_acquire()


def test_a_thread_without_a_slot_waits_its_timeout_and_sees_a_released_slot() -> None:
    controller = AdaptiveConcurrency(initial=1, max_limit=1)
    assert controller.try_acquire()
    assert controller.wait_for_slot(0.05) is False  # the one slot is taken: it waits out its timeout
    woke = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        result.append(controller.wait_for_slot(0.5))
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not woke.wait(0.1)  # still waiting: no slot came free
    controller.release()  # not a wake-up (the releasing sender takes its slot again), but seen at the timeout
    assert woke.wait(30.0)
    thread.join()
    assert result == [True]
    assert controller.try_acquire()


def test_a_growing_limit_wakes_the_waiting_threads() -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, initial=1, max_limit=4)
    assert controller.try_acquire()
    woke = threading.Event()
    thread = threading.Thread(target=lambda: controller.wait_for_slot(30.0) and woke.set())
    thread.start()
    assert not woke.wait(0.1)
    controller.observe(0.01, demand=True, rate=100)  # fast, full batches waiting, tokens to spare: one more slot
    assert controller.limit == 2
    assert woke.wait(30.0)
    thread.join()


class ServerSimulation:
    """No rate limit; a receiver that serves one request at a time in ``service`` s, ``network`` s away
    (round trip): throughput grows with concurrency only until the receiver is busy all the time."""

    def __init__(self, controller: AdaptiveConcurrency, clock: FakeClock, *, service: float,
                 network: float) -> None:
        self.c, self.clock, self.service, self.network = controller, clock, service, network
        self.server_free = 0.0
        self.done: list[float] = []
        self.limits: list[int] = []
        self._events: list[tuple[float, float]] = []  # (answered at, sent at)

    def run(self, until: float, step: float = 0.0005) -> None:
        clock = self.clock
        while clock.now < until:
            clock.now += step
            while self._events and self._events[0][0] <= clock.now:
                answered, sent = heapq.heappop(self._events)
                self.c.observe(answered - sent, demand=True)
                self.c.release()
                self.done.append(clock.now)
            while self.c.try_acquire():
                start = max(clock.now + self.network / 2, self.server_free)
                self.server_free = start + self.service
                heapq.heappush(self._events, (self.server_free + self.network / 2, clock.now))
            self.limits.append(self.c.limit)

    def rate_between(self, start: float, end: float) -> float:
        return sum(1 for t in self.done if start <= t < end) / (end - start)


def test_without_a_rate_limit_it_grows_only_while_throughput_grows() -> None:
    # 1 ms away, 4 ms per request at the receiver: 250 requests/s at most, reached with 2 in flight.
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, max_limit=8, initial=1)
    sim = ServerSimulation(controller, clock, service=0.004, network=0.001)
    sim.run(30.0)
    assert sim.rate_between(10.0, 30.0) >= 0.95 * 250
    # The extra slots it probes are undone: most of the time it runs 2 (3 while probing), never 8.
    settled = sim.limits[len(sim.limits) // 3:]
    assert max(settled) <= 3
    assert sum(1 for limit in settled if limit <= 2) >= 0.8 * len(settled)


def test_without_a_rate_limit_it_grows_while_each_slot_adds_throughput() -> None:
    # 50 ms away, 1 ms per request: each slot adds ~20 requests/s up to 50 in flight; the cap binds.
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, max_limit=8, initial=1)
    sim = ServerSimulation(controller, clock, service=0.001, network=0.05)
    sim.run(10.0)
    assert controller.limit == 8
    assert sim.rate_between(5.0, 10.0) >= 0.95 * 8 / 0.051


def test_close_wakes_a_thread_waiting_for_a_slot() -> None:
    controller = AdaptiveConcurrency(initial=1, max_limit=1)
    assert controller.try_acquire()
    woke = threading.Event()
    thread = threading.Thread(target=lambda: controller.wait_for_slot(30.0) and woke.set())
    thread.start()
    assert not woke.wait(0.1)
    controller.close()
    assert woke.wait(30.0)
    thread.join()
    assert controller.wait_for_slot(30.0)  # at once from now on


def test_from_cold_it_reaches_the_rate_within_a_few_round_trips() -> None:
    # 300 ms away: the first answer tells the latency, and Little's law the 30 slots 100/s need.
    clock = FakeClock()
    controller = AdaptiveConcurrency(clock=clock, initial=1)
    sim = Simulation(controller, clock, rate=100, burst=5, latency=lambda t: 0.3)
    sim.run(3.0)
    assert sim.rate_between(1.0, 3.0) >= 95
    assert sim.max_seen <= int(100 * 0.3 * 1.5) + 2


def test_slow_start_fills_the_first_round_trip_at_the_rate_limit_pace() -> None:
    """Before the first answer, every request sent opens a slot: at 300 ms and 100/s the first round
    trip carries the bucket's burst plus 30 requests, not one; without slow start it carries one."""
    for slow_start, expected in ((True, range(30, 37)), (False, range(1, 2))):
        clock = FakeClock()
        controller = AdaptiveConcurrency(max_limit=64, initial=1, slow_start=slow_start, clock=clock)
        sim = Simulation(controller, clock, rate=100, burst=5, latency=lambda t: 0.3)
        sim.run(0.299)
        assert not sim.done
        assert sim.max_seen in expected, (slow_start, sim.max_seen)
        sim.run(3.0)  # then Little's law holds it near rate x latency, never over the cap of 1.5x + 1
        assert controller.limit <= 46 and sim.rate_between(1.0, 3.0) >= 95


def test_slow_start_ends_at_the_first_answer_and_stays_within_max_in_flight() -> None:
    clock = FakeClock()
    controller = AdaptiveConcurrency(max_limit=8, initial=1, slow_start=True, clock=clock)
    sim = Simulation(controller, clock, rate=100, burst=5, latency=lambda t: 0.3)
    sim.run(0.299)
    assert sim.max_seen == controller.limit == 8  # the cap binds before the first answer
    fast = AdaptiveConcurrency(max_limit=64, initial=1, slow_start=True, clock=clock)
    clock.now = 0.0
    sim = Simulation(fast, clock, rate=100, burst=5, latency=lambda t: 0.005)
    sim.run(2.0)  # a near receiver: the burst opens a few slots, then Little's law brings it back
    assert sim.max_seen <= 6 and fast.limit <= 3
    assert not fast.sending(demand=True), "no growth once a latency is known"
