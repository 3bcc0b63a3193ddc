"""The load shape and the open-model scheduler, driven by a fake clock (no real time passes)."""

from __future__ import annotations

import math

import pytest

from ciotrack.errors import ConfigError
from ciotrack.loadtest.stages import ArrivalSchedule, Scheduler, Stage, parse_duration, parse_stage


class FakeClock:
    """``clock()`` and ``sleep()`` for the scheduler: sleeping advances the time, nothing waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_parse_duration_and_stage() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("2") == 2.0
    assert parse_stage("30s:5000") == Stage(30.0, 5000.0)
    assert parse_stage("0s:100") == Stage(0.0, 100.0)
    assert math.isnan(parse_stage("10s:").target)
    for bad in ("30s", "x:5", "30s:fast", "-1s:5", "10s:-3", "1h2x:4"):
        with pytest.raises(ConfigError, match="stage|duration"):
            parse_stage(bad)


def test_ramp_arrival_times_follow_the_area_under_the_rate() -> None:
    # 0 -> 10/s over 10 s: area t^2/2, so call i (0-based) is due at sqrt(2 (i + 1)).
    schedule = ArrivalSchedule([Stage(10.0, 10.0)])
    assert schedule.total == pytest.approx(50.0)
    for i in (0, 1, 7, 31, 49):
        assert schedule.time_of(i) == pytest.approx(math.sqrt(2 * (i + 1)))
    assert schedule.time_of(50) == math.inf
    assert schedule.rate_at(5.0) == pytest.approx(5.0)


def test_jump_hold_and_ramp_down() -> None:
    # 10 s at 0 -> 10, jump to 100, hold 1 s (empty target), ramp to 0 over 2 s.
    schedule = ArrivalSchedule([parse_stage("10s:10"), parse_stage("0s:100"), parse_stage("1s:"),
                                parse_stage("2s:0")])
    assert schedule.duration == 13.0
    assert schedule.total == pytest.approx(50 + 100 + 100)
    assert schedule.time_of(49) == pytest.approx(10.0)
    assert schedule.time_of(50) == pytest.approx(10.01)  # right after the jump: one every 10 ms
    assert schedule.time_of(149) == pytest.approx(11.0)
    assert schedule.time_of(249) == pytest.approx(13.0)
    assert schedule.rate_at(10.5) == 100.0
    assert schedule.rate_at(12.0) == pytest.approx(50.0)
    times = [schedule.time_of(i) for i in range(250)]
    assert times == sorted(times)


def test_start_rate_and_constant_rate() -> None:
    schedule = ArrivalSchedule([Stage(2.0, 100.0)], start_rate=100.0)
    assert schedule.total == pytest.approx(200.0)
    assert schedule.time_of(0) == pytest.approx(0.01)
    assert schedule.time_of(99) == pytest.approx(1.0)


def test_scheduler_issues_every_due_call_in_bursts_on_time() -> None:
    clock = FakeClock()
    schedule = ArrivalSchedule([Stage(1.0, 10_000.0), Stage(1.0, 10_000.0)])
    bursts: list[tuple[float, int, int]] = []
    origin = clock.now

    def issue(first: int, count: int) -> None:
        bursts.append((clock.now - origin, first, count))

    scheduler = Scheduler(schedule, issue, clock=clock.clock, sleep=clock.sleep, tick=0.001)
    scheduler.run(started_at=origin)
    assert scheduler.issued == 15_000 and scheduler.dropped == 0
    # Contiguous, no call twice, none before it is due.
    expected_first = 0
    for at, first, count in bursts:
        assert first == expected_first
        assert schedule.time_of(first + count - 1) <= at + 1e-9
        expected_first += count
    assert expected_first == 15_000
    assert len(bursts) < 15_000 / 5  # bursts, not one wake-up per call


def test_scheduler_counts_missed_starts_and_never_runs_a_call_late() -> None:
    clock = FakeClock()
    schedule = ArrivalSchedule([Stage(0.0, 1000.0), Stage(5.0, 1000.0)])
    origin = clock.now
    ran: list[tuple[int, int]] = []

    def issue(first: int, count: int) -> None:
        ran.append((first, count))
        late = (clock.now - origin) - schedule.time_of(first)
        assert late <= 0.5 + 1e-9  # the scheduler's max_lateness
        if first < 1000 <= first + count:
            clock.now += 2.0  # the system under test stalls the generator for 2 s

    scheduler = Scheduler(schedule, issue, clock=clock.clock, sleep=clock.sleep, max_lateness=0.5)
    scheduler.run(started_at=origin)
    # The stall skipped the calls due more than 0.5 s before the generator got back.
    assert 1300 <= scheduler.dropped <= 1600
    assert scheduler.issued + scheduler.dropped == 5000
    assert scheduler.lateness_max >= 0.5 - 0.01
    issued = sum(count for _, count in ran)
    assert issued == scheduler.issued


def test_scheduler_low_rate_sleeps_until_each_call() -> None:
    clock = FakeClock()
    schedule = ArrivalSchedule([Stage(0.0, 2.0), Stage(3.0, 2.0)])
    origin = clock.now
    seen: list[float] = []
    scheduler = Scheduler(schedule, lambda first, count: seen.append(clock.now - origin), clock=clock.clock,
                          sleep=clock.sleep)
    scheduler.run(started_at=origin)
    assert seen == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert scheduler.dropped == 0
