"""Scenarios (load shape + call mix) from flags or a TOML file, and the tight call loop that runs them.

A TOML scenario file holds one or more ``[[scenario]]`` tables; each runs on its own generator
thread, concurrently, from time 0::

    [[scenario]]
    name = "track"
    stages = ["30s:5000", "1m:5000", "10s:0"]   # DURATION:TARGET, as --stage
    start_rate = 0                               # calls/s at time 0 (k6 startRate)
    mix = { track = 7, identify = 2, page = 1 }  # relative weights
    payload_bytes = 200                          # approximate JSON size of each call's data
    customers = 10000                            # distinct customer ids
    dedup_share = 0.0                            # share of identify calls repeating one (deduplicated)

Top-level keys (outside ``[[scenario]]``) are defaults for every scenario.
"""

from __future__ import annotations

import itertools
import math
import random
import time
import tomllib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ciotrack.errors import ConfigError
from ciotrack.loadtest.stages import ArrivalSchedule, Stage, parse_stage

__all__ = ["CALL_KINDS", "CallLoop", "Scenario", "load_scenarios"]

CALL_KINDS = ("track", "identify", "page", "dedup")
_POOL_SIZE = 4096  # the smallest pool (a power of two: entries are picked with ``index & mask``)
_POOL_MAX = 1 << 17  # the largest: one entry per customer, so this bounds ``customers``
_SCENARIO_KEYS = {"name", "stages", "start_rate", "mix", "payload_bytes", "customers", "dedup_share", "event_name"}


@dataclass(frozen=True)
class Scenario:
    name: str
    stages: tuple[Stage, ...]
    start_rate: float = 0.0
    mix: Mapping[str, float] = field(default_factory=lambda: {"track": 1.0})
    payload_bytes: int = 200
    customers: int = 10_000
    dedup_share: float = 0.0
    """Share of calls that repeat an identify already sent (the tracker's dedup skips them)."""
    event_name: str = "loadtest"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"scenario {self.name!r}: no stages")
        if not _finite(self.start_rate) or self.start_rate < 0:
            raise ConfigError(f"scenario {self.name!r}: start_rate must be a finite number >= 0 (calls/s), "
                              f"not {self.start_rate!r}")
        unknown = sorted(set(self.mix) - {"track", "identify", "page"})
        if unknown:
            raise ConfigError(f"scenario {self.name!r}: unknown call kinds in mix: {', '.join(unknown)}")
        if not self.mix or any(not _finite(w) or w < 0 for w in self.mix.values()) \
                or sum(self.mix.values()) <= 0:
            raise ConfigError(f"scenario {self.name!r}: mix needs positive weights (finite numbers)")
        if not isinstance(self.event_name, str) or not self.event_name:
            raise ConfigError(f"scenario {self.name!r}: event_name must be a non-empty string")
        if not 0.0 <= self.dedup_share < 1.0:
            raise ConfigError(f"scenario {self.name!r}: dedup_share must be in [0, 1)")
        if not 0 <= self.payload_bytes <= 30_000:
            raise ConfigError(f"scenario {self.name!r}: payload_bytes must be 0..30000 (an operation is <= 32 KB)")
        if not isinstance(self.customers, int) or self.customers < 1:
            raise ConfigError(f"scenario {self.name!r}: customers must be an integer >= 1")
        if pool_size(self.customers, self.dedup_share) > _POOL_MAX:
            raise ConfigError(f"scenario {self.name!r}: at most {_POOL_MAX * (1 - self.dedup_share):,.0f} "
                              f"customers with dedup_share {self.dedup_share:g} (the call pool holds "
                              f"{_POOL_MAX:,} prepared calls)")

    def schedule(self) -> ArrivalSchedule:
        return ArrivalSchedule(self.stages, self.start_rate)

    def example_operation_bytes(self) -> int:
        """Approximate encoded size of one v2 batch operation of this mix (for the ceiling estimate)."""
        # identifiers + type/action + timestamp + id wrapper, measured on the core's encoding: ~130 bytes.
        return 130 + len(self.event_name) + _payload_json_bytes(self.payload_bytes)


def pool_size(customers: int, dedup_share: float) -> int:
    """Prepared calls in a scenario's pool: a power of two, at least ``_POOL_SIZE``, with a slot for
    every customer besides the ``dedup_share`` of slots that repeat an identify."""
    size = _POOL_SIZE
    while size - math.floor(size * dedup_share) < customers and size <= _POOL_MAX:
        size *= 2
    return size


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _payload(payload_bytes: int, rng: random.Random, text: str) -> dict[str, Any]:
    """A data dict of about ``payload_bytes`` of JSON; ``text`` is random letters to slice from."""
    base: dict[str, Any] = {"total": round(rng.uniform(1, 500), 2), "currency": "EUR", "items": rng.randint(1, 9)}
    pad = payload_bytes - 50
    n = 0
    while pad > 0:
        # Customer.io allows 1000 bytes per attribute value: pad with several short fields.
        size = min(pad, 900)
        start = rng.randrange(len(text) - size)
        base[f"note{n}" if n else "note"] = text[start:start + size]
        pad -= size + 12
        n += 1
    return base


def _payload_json_bytes(payload_bytes: int) -> int:
    return max(payload_bytes, 50)


def load_scenarios(path: str) -> list[Scenario]:
    """Read a TOML scenario file (see the module docstring)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"scenario file {path!r}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"scenario file {path!r}: {err}") from None
    tables = data.pop("scenario", None)
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"scenario file {path!r}: needs at least one [[scenario]] table")
    defaults = data
    unknown = sorted(set(defaults) - _SCENARIO_KEYS)
    if unknown:
        raise ConfigError(f"scenario file {path!r}: unknown keys {', '.join(unknown)}")
    scenarios = []
    for n, table in enumerate(tables, 1):
        merged = {**defaults, **table}
        unknown = sorted(set(merged) - _SCENARIO_KEYS)
        if unknown:
            raise ConfigError(f"scenario file {path!r}, scenario {n}: unknown keys {', '.join(unknown)}")
        stages = merged.pop("stages", None)
        if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
            raise ConfigError(f"scenario file {path!r}, scenario {n}: stages must be a list of 'DURATION:TARGET'")
        merged.setdefault("name", f"scenario-{n}")
        try:
            scenarios.append(Scenario(stages=tuple(parse_stage(s) for s in stages), **merged))
        except TypeError as err:
            raise ConfigError(f"scenario file {path!r}, scenario {n}: {err}") from None
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"scenario file {path!r}: scenario names must be unique")
    return scenarios


Sample = tuple[float, int, int | None]
"""``(due_time, enqueue_ns, accepted_ordinal)``: one sampled call. ``due_time`` is on the
``time.monotonic`` clock; the ordinal is None for a call the tracker is expected to deduplicate."""


class CallLoop:
    """Builds the calls of one scenario and runs bursts of them against a tracker.

    A pool of prepared calls (customer, name, data) is cycled through, so a burst is a tight loop
    of native calls. Its customers take turns (``lt-0``, ``lt-1``, ...), so the pool has each of
    ``customers`` at least once; its data dicts are 4096 at most, shared. Identify attributes get a
    sequence number per call, or the tracker's identify dedup would skip repeats of a pool entry.
    One call in ``sample_every`` is timed on its own (``enqueue_duration``) and queued in
    ``samples`` with its *due* time and the tracker's ``accepted`` count just after it, which the
    driver turns into ``delivery_duration``.
    """

    def __init__(self, scenario: Scenario, tracker: Any, schedule: ArrivalSchedule, *, sample_every: int,
                 accepted_count: Callable[[], int], seed: int = 1) -> None:
        self.scenario = scenario
        self.schedule = schedule
        self.sample_every = max(1, sample_every)
        self.samples: deque[Sample] = deque()
        self.origin = math.nan  # monotonic time of the schedule's t = 0, set by the driver
        self._accepted_count = accepted_count
        rng = random.Random(seed)
        seq = itertools.count()
        identify = tracker.identify

        def identify_fresh(customer: str, attributes: dict[str, Any], _unused: Any) -> None:
            attributes = dict(attributes)
            attributes["seq"] = next(seq)
            identify(customer, attributes)

        def identify_again(customer: str, attributes: dict[str, Any], _unused: Any) -> None:
            identify(customer, attributes)

        self.dedup_customers = [f"dedup-{scenario.name}-{i}" for i in range(16)]
        self._dedup_attributes = {"plan": "loadtest", "dedup": True}
        self._identify_again = identify_again
        kinds = list(scenario.mix)
        weights = [float(scenario.mix[k]) for k in kinds]
        text = "".join(rng.choices(_LETTERS, k=8192))
        pool: list[tuple[Callable[[Any, Any, Any], None], Any, Any, Any]] = []
        dedup_flags: list[bool] = []
        size = pool_size(scenario.customers, scenario.dedup_share)
        payloads: list[dict[str, Any]] = []
        share = scenario.dedup_share
        fresh = 0
        for k in range(size):
            if math.floor((k + 1) * share) > math.floor(k * share):  # evenly spread: exactly the share
                pool.append((identify_again, rng.choice(self.dedup_customers), self._dedup_attributes, None))
                dedup_flags.append(True)
                continue
            customer = f"lt-{fresh % scenario.customers}"
            fresh += 1
            kind = rng.choices(kinds, weights)[0]
            if len(payloads) < _POOL_SIZE:
                payloads.append(_payload(scenario.payload_bytes, rng, text))
            data = payloads[k % len(payloads)]
            if kind == "track":
                pool.append((tracker.track, customer, scenario.event_name, data))
            elif kind == "page":
                pool.append((tracker.page, customer, f"/loadtest/{rng.randrange(500)}", data))
            else:
                pool.append((identify_fresh, customer, data, None))
            dedup_flags.append(False)
        self._pool = pool
        self._mask = size - 1
        self._dedup = dedup_flags

    def warm_up(self) -> int:
        """Send each dedup customer's identify once, so the run's repeats are deduplicated; returns
        how many calls that made (they are accepted and delivered, outside the schedule)."""
        if not self.scenario.dedup_share:
            return 0
        for customer in self.dedup_customers:
            self._identify_again(customer, self._dedup_attributes, None)
        return len(self.dedup_customers)

    def issue(self, first: int, count: int) -> None:
        """Run calls ``first .. first + count - 1`` (the scheduler's burst)."""
        pool = self._pool
        mask = self._mask
        every = self.sample_every
        end = first + count
        i = first
        while i < end:
            sampled = -(-i // every) * every  # the next sampled index >= i
            stop = min(end, sampled)
            for k in range(i, stop):
                fn, a, b, c = pool[k & mask]
                fn(a, b, c)
            if stop < end:
                self._sampled_call(stop)
                stop += 1
            i = stop

    def _sampled_call(self, index: int) -> None:
        entry = index & self._mask
        fn, a, b, c = self._pool[entry]
        clock = time.perf_counter_ns
        t0 = clock()
        fn(a, b, c)
        elapsed = clock() - t0
        ordinal = None if self._dedup[entry] else self._accepted_count()
        self.samples.append((self.origin + self.schedule.time_of(index), elapsed, ordinal))


def single_scenario(stages: Sequence[Stage], **options: Any) -> Scenario:
    return Scenario(name=options.pop("name", "default"), stages=tuple(stages), **options)
