"""Load shape (k6 ``ramping-arrival-rate`` stages) and the open-model arrival scheduler.

A stage ``DURATION:TARGET`` moves the arrival rate linearly from the previous stage's target (the
first from ``start_rate``, 0 by default) to ``TARGET`` calls/s over ``DURATION``; a zero duration
jumps. Arrival *i* (0-based) is due where the area under the rate curve reaches ``i + 1`` (k6 starts
iteration *i* where the area reaches *i*; we put the first call after the first full unit of area,
so a 10/s constant stage issues its first call at 0.1 s and its 10th at 1.0 s, the same count).

The scheduler is an **open model**: calls are due at those times whatever the system does. It runs
due calls in small bursts per tick (one Python call per arrival would cap a generator thread far
below 200k/s), never runs a call later than ``max_lateness`` after its due time (those are counted as
``dropped_iterations``, as k6 does, and never retried), and records how late each burst started.
Clock and sleep are injectable, so tests drive it with a fake clock.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ciotrack.errors import ConfigError

__all__ = ["ArrivalSchedule", "Scheduler", "Stage", "parse_duration", "parse_stage"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``1m30s``, ``2h``, or a bare number of seconds -> seconds."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"duration {text!r} must be a finite number >= 0")
        return value
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or not raw:
        raise ConfigError(f"cannot parse duration {text!r} (use e.g. 500ms, 30s, 1m30s)")
    return total


@dataclass(frozen=True)
class Stage:
    duration: float
    """Seconds; 0 means an instant jump to ``target``."""
    target: float
    """Calls/s reached at the end of the stage."""


def parse_stage(text: str) -> Stage:
    """``DURATION:TARGET`` as k6's ``--stage`` flag: ``30s:5000`` ramps to 5000/s over 30 s, ``0s:100``
    jumps. An empty target (``10s:``) holds the previous one (resolved by :class:`ArrivalSchedule`,
    marked here by a NaN target)."""
    duration, sep, target = text.partition(":")
    if not sep:
        raise ConfigError(f"stage {text!r}: expected DURATION:TARGET, e.g. 30s:5000")
    seconds = parse_duration(duration)
    if not target.strip():
        return Stage(seconds, math.nan)
    try:
        rate = float(target)
    except ValueError:
        raise ConfigError(f"stage {text!r}: target {target!r} is not a number of calls/s") from None
    if rate < 0 or not math.isfinite(rate):
        raise ConfigError(f"stage {text!r}: target must be a finite number >= 0")
    return Stage(seconds, rate)


class ArrivalSchedule:
    """Rate over time (piecewise linear) and its inverse: when the *i*-th call is due."""

    def __init__(self, stages: Sequence[Stage], start_rate: float = 0.0) -> None:
        if not stages:
            raise ConfigError("at least one stage is needed")
        self.start_rate = start_rate
        resolved: list[Stage] = []
        previous = start_rate
        for stage in stages:
            target = previous if math.isnan(stage.target) else stage.target
            resolved.append(Stage(stage.duration, target))
            previous = target
        self.stages: tuple[Stage, ...] = tuple(resolved)
        # Per stage: start time, start rate, end rate, arrivals before it (area so far).
        self._starts: list[float] = []
        self._from: list[float] = []
        self._area_before: list[float] = []
        t = area = 0.0
        rate = start_rate
        for stage in self.stages:
            self._starts.append(t)
            self._area_before.append(area)
            self._from.append(rate if stage.duration > 0 else stage.target)
            area += stage.duration * (self._from[-1] + stage.target) / 2.0
            t += stage.duration
            rate = stage.target
        self._area_end = self._area_before[1:] + [area]
        self.duration = t
        self.total = area
        """Calls due over the whole schedule (fractional: the last partial one never comes)."""
        self.peak_rate = max([start_rate] + [s.target for s in self.stages])

    def _index(self, t: float) -> int:
        return max(0, bisect.bisect_right(self._starts, t) - 1)

    def rate_at(self, t: float) -> float:
        """Target calls/s at ``t`` seconds from the start (0 after the end)."""
        if t < 0 or t >= self.duration:
            return 0.0
        k = self._index(t)
        stage = self.stages[k]
        if stage.duration <= 0:
            return stage.target
        frac = (t - self._starts[k]) / stage.duration
        return self._from[k] + (stage.target - self._from[k]) * frac

    def due_by(self, t: float) -> float:
        """Area under the rate curve over ``[0, t]``: calls due by ``t`` (floor it for a count)."""
        if t <= 0:
            return 0.0
        if t >= self.duration:
            return self.total
        k = self._index(t)
        stage = self.stages[k]
        dt = t - self._starts[k]
        if stage.duration <= 0:
            return self._area_before[k]
        slope = (stage.target - self._from[k]) / stage.duration
        return self._area_before[k] + self._from[k] * dt + slope * dt * dt / 2.0

    def time_of(self, i: int) -> float:
        """Seconds from the start at which call ``i`` (0-based) is due: where the area reaches i + 1.
        ``math.inf`` past the end of the schedule."""
        need = float(i + 1)
        if need > self.total + 1e-9:
            return math.inf
        # The first stage whose cumulative area reaches ``need``: never a zero-area stage, whose end
        # equals the previous stage's end (bisect_left takes the earlier one).
        k = min(bisect.bisect_left(self._area_end, need - 1e-9), len(self.stages) - 1)
        stage = self.stages[k]
        a = need - self._area_before[k]
        r0 = self._from[k]
        slope = (stage.target - r0) / stage.duration
        if abs(slope) < 1e-12:
            dt = a / r0
        else:
            # Solve r0*dt + slope*dt^2/2 = a (closed form, the smaller positive root).
            disc = max(0.0, r0 * r0 + 2.0 * slope * a)
            dt = (math.sqrt(disc) - r0) / slope if slope > 0 else (r0 - math.sqrt(disc)) / -slope
        return self._starts[k] + min(max(dt, 0.0), stage.duration)


IssueBurst = Callable[[int, int], None]
"""``issue(first_index, count)``: run ``count`` calls, indexes ``first_index ..``; return when done."""


class Scheduler:
    """Runs due calls in bursts, counts missed starts, and records lateness.

    ``max_lateness``: a call more than this many seconds past its due time is not run (counted in
    ``dropped``). ``tick``: shortest sleep between bursts at high rates (longer sleeps are exact:
    until the next due call). ``max_burst``: most calls per burst, so the lateness gauge and a
    stop request are seen at least every ``max_burst`` calls.
    """

    def __init__(
        self,
        schedule: ArrivalSchedule,
        issue: IssueBurst,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_lateness: float = 1.0,
        tick: float = 0.001,
        max_burst: int = 2000,
    ) -> None:
        self.schedule = schedule
        self._issue = issue
        self._clock = clock
        self._sleep = sleep
        self.max_lateness = max_lateness
        self.tick = tick
        self.max_burst = max_burst
        self.issued = 0
        """Calls run so far."""
        self.dropped = 0
        """Calls not run because they were more than ``max_lateness`` late (k6 ``dropped_iterations``)."""
        self.lateness = 0.0
        """Seconds the latest burst started after its first call's due time."""
        self.lateness_max = 0.0
        """Largest ``lateness`` since the reader last reset it to 0."""
        self.bursts = 0
        self.started_at = math.nan
        self.finished_at = math.nan
        """Clock time when :meth:`run` returned: the last burst's end, late or not."""
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def run(self, started_at: float | None = None) -> None:
        """Run the whole schedule (or until :meth:`stop`). ``started_at`` is the clock's time 0."""
        schedule = self.schedule
        clock = self._clock
        t0 = clock() if started_at is None else started_at
        self.started_at = t0
        total = math.floor(schedule.total + 1e-9)
        next_index = 0
        while next_index < total and not self.stopped:
            now = clock() - t0
            due = min(total, math.floor(schedule.due_by(now) + 1e-9))
            if due > next_index:
                # Calls due before (now - max_lateness) are never run (k6: never run later).
                too_late = min(due, math.floor(schedule.due_by(now - self.max_lateness) + 1e-9))
                if too_late > next_index:
                    self.dropped += too_late - next_index
                    next_index = too_late
                count = min(due - next_index, self.max_burst)
                if count > 0:
                    late = now - schedule.time_of(next_index)
                    self.lateness = late
                    if late > self.lateness_max:
                        self.lateness_max = late
                    self._issue(next_index, count)
                    self.issued += count
                    self.bursts += 1
                    next_index += count
                    if next_index < due:
                        continue  # more are due already: no sleep
            wake = schedule.time_of(next_index)
            if math.isinf(wake):
                break
            now = clock() - t0
            delay = wake - now
            if delay > 0:
                # At high rates wait a whole tick (one burst per tick); at low rates, until the next call.
                self._sleep(max(delay, self.tick))
        self.lateness = 0.0
        self.finished_at = clock()
