"""The worker's settings (``ciotrack worker``'s options), validated before anything starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_BURST", "DEFAULT_ENDPOINTS", "DEFAULT_RATE_LIMIT", "WorkerConfig"]

DEFAULT_ENDPOINTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}

# The fleet's pacing against a workspace limit of 100 requests/s. The shared GCRA spaces slots exactly
# on Redis' clock; what reaches Customer.io is those slots plus each request's own delay (scheduling,
# connection, network), which varies. A burst of 2 (one slot of tolerance) keeps the fleet from firing
# a volley after an idle moment, leaving the server's own burst allowance to absorb that jitter, and
# 3 % under the limit refills that allowance at 3 tokens/s. At 99 % it refilled at 1/s: one stall that
# spent it left the fleet drawing 429s for ~10 s (13 in one run of the 4-producer test at load 6), each
# pausing the whole fleet. Measured against the emulator (100/s, burst 10): benches/bench_fleet.py.
DEFAULT_RATE_LIMIT = 97.0
DEFAULT_BURST = 2.0


@dataclass
class WorkerConfig:
    redis_url: str
    site_id: str
    api_key: str
    endpoint: str | None = None
    """One base URL for every region (an emulator); None: Customer.io's US/EU endpoint per entry."""
    region: str = "us"
    """Where entries with an unknown region go."""
    rate_limit: float = DEFAULT_RATE_LIMIT
    burst: float = DEFAULT_BURST
    concurrency: int | None = None
    """Delivery threads; None: enough for the rate limit at ~100 ms per request (rate * 0.1 + 2)."""
    visibility_timeout: float = 60.0
    max_deliveries: int = 5
    drain_timeout: float = 25.0
    request_timeout: float = 10.0
    block_ms: int = 2000
    claim_interval: float | None = None
    stats_interval: float = 5.0
    consumer: str | None = None
    prefix: str = "ciotrack"
    coalesce: bool = True
    """Send several small fresh entries of one region as one request of up to 500 KB (each entry is
    still acknowledged, retried and dead-lettered on its own): see :mod:`ciotrack.fleet.coalesce`."""

    def __repr__(self) -> str:  # the API key stays out of every repr
        return (f"WorkerConfig(site_id={self.site_id!r}, endpoint={self.endpoint!r}, rate_limit={self.rate_limit}, "
                f"concurrency={self.threads}, visibility_timeout={self.visibility_timeout})")

    @property
    def threads(self) -> int:
        if self.concurrency is not None:
            return max(1, self.concurrency)
        return max(2, math.ceil(self.rate_limit * 0.1) + 2) if self.rate_limit > 0 else 12

    @property
    def delivery_deadline(self) -> float:
        """How long one entry may be held: a request in flight at the deadline still ends in time."""
        return self.visibility_timeout - self.request_timeout - 5.0

    def validate(self) -> None:
        if not self.site_id or not self.api_key:
            raise ValueError("a site id and an API key are needed (--site-id/--api-key or CIOTRACK_*)")
        if self.delivery_deadline < 1.0:
            raise ValueError("visibility_timeout must exceed request_timeout + 6 s (a live worker's entries "
                             "must never be claimed)")
        if not self.drain_timeout >= 2.0:
            raise ValueError(f"drain_timeout must be >= 2 s, got {self.drain_timeout:g}: deliveries in flight at "
                             "SIGTERM get drain_timeout - 2 s, handing the rest back takes the last 2")
        if not self.request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0 s, got {self.request_timeout:g}")
        if not 0 < self.block_ms <= 30_000:
            raise ValueError("block_ms must be in (0, 30000]")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
