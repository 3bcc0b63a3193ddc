"""Fault injection settings and the per-request decision, plus the per-workspace rate limit.

A ``Faults`` value is immutable; ``set_faults`` swaps in a new one, so a request sees one
consistent configuration even while a test changes it from another thread.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
from typing import Any

FAULT_NAMES = ("error", "reset", "storm_429", "slow_read", "latency", "apply_then_drop", "rate_limited", "redirect")

# Named latency profiles: (median seconds, p99 seconds). ``customerio`` is what a client in the same
# continent sees from track.customer.io (median ~80 ms, a tail to ~300 ms at p99), so tests and the
# load test can reproduce the round trip that bounds one sender's request rate.
LATENCY_PROFILES: dict[str, tuple[float, float]] = {
    "customerio": (0.080, 0.300),
    "none": (0.0, 0.0),
}
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile: p99 = median * exp(sigma * _Z99)


@dataclasses.dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    latency: float = 0.0
    latency_jitter: float = 0.0
    latency_p99: float = 0.0
    """When above ``latency``: the delay is lognormal with median ``latency`` and this 99th
    percentile (a real service's tail), instead of fixed (plus the uniform ``latency_jitter``)."""
    reset_rate: float = 0.0
    storm_429_until: float = 0.0
    """``time.time()`` until which every Track API request is answered 429."""
    storm_429_retry_after: int = 1
    slow_read: float = 0.0
    apply_then_drop_rate: float = 0.0
    clock_skew: float = 0.0
    """Seconds added to the ``Date`` header of every answer (a server whose clock is off, for doctor)."""
    redirect_to: str = ""
    """When set, every Track API request is answered ``301`` with this ``Location`` (an http->https
    redirect, a proxy's login page) and nothing is applied."""
    max_body_bytes: int = 0
    """When above 0: Track API request bodies larger than this are answered ``413`` (below Customer.io's
    own 500 KB / 32 KB limits), so small batches exercise a client's split-on-413 path."""
    seed: int | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> Faults:
        """Build from ``set_faults`` keywords / the control endpoint's JSON; unknown keys are errors.

        ``storm_429_seconds`` (relative; alias ``storm_429``) is accepted as well as the absolute
        ``storm_429_until``; ``latency_ms``/``latency_p99_ms`` as well as the seconds, and
        ``latency_profile`` (a name of ``LATENCY_PROFILES``) for both. The result replaces the whole
        configuration (``{}`` clears it).
        """
        values = dict(settings or {})
        profile = values.pop("latency_profile", None)
        if profile is not None:
            if profile not in LATENCY_PROFILES:
                raise ValueError(f"unknown latency_profile {profile!r} (known: {', '.join(sorted(LATENCY_PROFILES))})")
            median, p99 = LATENCY_PROFILES[profile]
            values.setdefault("latency", median)
            values.setdefault("latency_p99", p99)
        for ms_name, name in (("latency_ms", "latency"), ("latency_p99_ms", "latency_p99")):
            if ms_name in values:
                values[name] = _number(values.pop(ms_name), ms_name) / 1000.0
        seconds = values.pop("storm_429_seconds", None)
        alias = values.pop("storm_429", None)  # set_faults(storm_429=5): the same as storm_429_seconds
        if seconds is None:
            seconds = alias
        if seconds is not None:
            values["storm_429_until"] = time.time() + _number(seconds, "storm_429_seconds")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        for name in ("error_rate", "reset_rate", "apply_then_drop_rate"):
            if name in values and not 0.0 <= _number(values[name], name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if "clock_skew" in values:
            _number(values["clock_skew"], "clock_skew")
        if "redirect_to" in values and not isinstance(values["redirect_to"], str):
            raise ValueError("redirect_to must be a URL string ('' for none)")
        for name in ("latency", "latency_jitter", "latency_p99", "slow_read", "storm_429_until"):
            if name in values and _number(values[name], name) < 0:
                raise ValueError(f"{name} must not be negative")
        if "error_statuses" in values:
            statuses = tuple(values["error_statuses"])
            if not statuses or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses):
                raise ValueError("error_statuses must be a non-empty list of HTTP statuses")
            values["error_statuses"] = statuses
        if "max_body_bytes" in values:
            limit = values["max_body_bytes"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError("max_body_bytes must be an integer >= 0 (0: the real limits)")
        if "storm_429_retry_after" in values:
            retry_after = values["storm_429_retry_after"]
            if not isinstance(retry_after, int) or retry_after < 1:
                raise ValueError("storm_429_retry_after must be an integer >= 1")
        faults = cls(**values)
        if faults.latency_p99 and faults.latency_p99 < faults.latency:
            raise ValueError("latency_p99 must not be below latency (the median)")
        return faults

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["error_statuses"] = list(self.error_statuses)
        return out


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number")
    return float(value)


class FaultState:
    """The active ``Faults`` and its seeded RNG (one lock: ``random.Random`` is not meant to be shared)."""

    def __init__(self, faults: Faults) -> None:
        self._lock = threading.Lock()
        self.set(faults)

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)

    def chance(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def uniform(self, upper: float) -> float:
        with self._lock:
            return self._rng.uniform(0.0, upper)

    def latency(self) -> float:
        """Seconds to delay one answer: fixed + uniform jitter, or lognormal when ``latency_p99`` is set."""
        faults = self.faults
        if faults.latency_p99 > faults.latency > 0:
            sigma = math.log(faults.latency_p99 / faults.latency) / _Z99
            with self._lock:
                return faults.latency * math.exp(self._rng.gauss(0.0, sigma))
        return faults.latency + (self.uniform(faults.latency_jitter) if faults.latency_jitter else 0.0)


class TokenBucket:
    """Requests per second with a burst; starts full. Caller holds no lock: this one has its own."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be available."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate
