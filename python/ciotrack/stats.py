"""``Tracker.stats()``: one typed, immutable snapshot of what a tracker did and holds.

The numbers come from the native core (atomic counters, log-bucket histograms) plus a few gauges only
the sender knows (batches in flight, rate-limit tokens). Counters are cumulative since the tracker was
made (or rebuilt after a fork); histograms too (no sliding window): scrape them and diff, as
Prometheus does.

Counter names in the core are flat (``failed_http_400``, ``requests_207``, ``dropped_closed``); the
snapshot groups them by prefix into mappings, so a reason added later shows up here without a change
to this module. The names come from one vocabulary, :class:`ciotrack.losses.Reason`. The raw maps
stay available as :attr:`Stats.counters`, :attr:`Stats.gauges` and :attr:`Stats.histograms`, and
``stats["counters"]`` still works for code written against the earlier dict snapshot.

Histogram quantiles are the upper bound of the log bucket holding the exact quantile (buckets are
1/8 of a power of two wide, so at most 12.5 % above it), never above ``max``. Each histogram also
carries cumulative counts at fixed Prometheus ``le`` bounds (:attr:`HistogramSummary.buckets`),
computed by the core at snapshot time; every bound is a bucket edge, so the counts are exact.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ciotrack.concurrency import ConcurrencyState
from ciotrack.losses import drop_reason

__all__ = ["HistogramSummary", "Stats"]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    # A fresh plain dict per snapshot, typed read-only: unlike a MappingProxyType it survives
    # dataclasses.asdict(), copy and pickle (snapshots get shipped to other processes and to JSON).
    return dict(mapping)


@dataclass(frozen=True, slots=True)
class HistogramSummary:
    """Count, sum and quantiles of one histogram. All zero while nothing was recorded (or with
    ``metrics=False``, which turns histograms off)."""

    count: int = 0
    sum: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    buckets: tuple[tuple[float, int], ...] = ()
    """``(le, values <= le)`` at ascending bounds (``_core.histogram_bounds(name)``), exact: a Prometheus
    histogram's ``_bucket`` series without ``+Inf`` (that one is :attr:`count`). Empty while nothing
    was recorded."""

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @classmethod
    def from_core(cls, raw: Mapping[str, Any] | None) -> HistogramSummary:
        if not raw:
            return cls()
        return cls(count=int(raw["count"]), sum=float(raw["sum"]), p50=float(raw["p50"]), p95=float(raw["p95"]),
                   p99=float(raw["p99"]), max=float(raw["max"]),
                   buckets=tuple((float(le), int(n)) for le, n in raw.get("buckets", ())))


@dataclass(frozen=True)
class Stats:
    """A tracker's metrics at one moment. Each call makes a new snapshot; nothing in it changes later."""

    # -- counters (cumulative) --------------------------------------------------------------------
    accepted: int
    """Calls that queued an operation."""
    invalid: int
    """Calls refused for bad input (they raised)."""
    deduplicated: Mapping[str, int]
    """Calls skipped as duplicates, by kind (``identify``, ``event``)."""
    dropped: Mapping[str, int]
    """Operations dropped before sending, by reason (``queue_full``, ``evicted_oldest``, ``closed``,
    ``shutdown``, ...): the same reasons ``on_drop`` receives."""
    delivered: int
    """Operations Customer.io acknowledged."""
    failed: Mapping[str, int]
    """Operations finally failed, by reason (``http_401``, ``invalid``, ``retries_exhausted``, ...)."""
    failed_total: int
    retried: int
    """Requests made again after a transient failure (429, 5xx, timeout, connection error)."""
    spooled: int
    """Operations handed to the disk spool instead of being sent or dropped."""
    replayed: int
    """Operations read back from the spool and queued again."""
    requests: Mapping[str, int]
    """HTTP requests by status (``"200"``, ``"207"``, ``"503"``, ...; ``"error"``: no response)."""
    bytes_sent: int
    """Request body bytes Customer.io accepted (2xx)."""
    splits: int
    """Batches split in two after a 413."""
    overflowed: int
    """Operations a full queue handed to the overflow list (``on_full="spool"``)."""

    # -- gauges (now) ---------------------------------------------------------------------------
    queued_ops: Mapping[str, int]
    """Operations waiting in the queue, by region."""
    queued_bytes: Mapping[str, int]
    """Encoded bytes waiting in the queue, by region."""
    in_flight: int
    """Batches taken from the queue and not finished yet (being sent, or waiting to be retried)."""
    bucket_tokens: Mapping[str, float]
    """Rate-limit tokens available now, by region (empty with ``rate_limit=0``)."""
    concurrency_limit: Mapping[str, int]
    """Requests allowed in flight now, by region: the adaptive controller's current limit (or ``senders``)."""
    requests_in_flight: Mapping[str, int]
    """Batches of each region being sent now (each holds one of the ``concurrency_limit`` slots)."""
    overflow_ops: int
    """Operations in the overflow list, not yet taken by the spool."""

    # -- histograms -------------------------------------------------------------------------------
    request_latency: HistogramSummary
    """Seconds per HTTP request (every attempt, whatever its answer)."""
    batch_size: HistogramSummary
    """Operations per accepted batch."""
    batch_bytes: HistogramSummary
    """Body bytes per accepted batch."""
    delivery_latency: HistogramSummary
    """Seconds from the call to Customer.io's acknowledgement, per delivered operation."""

    in_flight_ops: int = 0
    """Operations in those batches: taken from the queue, neither delivered nor lost yet. Without a spool,
    ``accepted == delivered + failed_total + dropped_total - dropped["queue_full"] - dropped["closed"]
    + sum(queued_ops.values()) + in_flight_ops`` (those two drops were never accepted)."""
    destination: str = "track_api"
    """Where batches go: ``"track_api"`` (Customer.io), ``"redis"`` (fleet mode: ``delivered`` and a
    True ``flush()`` mean *durable in the Redis stream*; the workers report delivery to Customer.io) or
    ``"custom"`` (an injected destination)."""
    metrics_enabled: bool = True
    """False with ``metrics=False``: histograms stay empty, counters are still kept."""
    taken_at: float = field(default_factory=time.time)

    # -- raw maps, as the core reports them -------------------------------------------------------
    counters: Mapping[str, int] = field(default_factory=dict, repr=False)
    gauges: Mapping[str, float] = field(default_factory=dict, repr=False)
    histograms: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def deduplicated_total(self) -> int:
        return sum(self.deduplicated.values())

    def __getitem__(self, key: str) -> Mapping[str, Any]:
        """``stats["counters"]``, ``["gauges"]``, ``["histograms"]``: the raw maps (the dict snapshot
        of earlier versions)."""
        if key in ("counters", "gauges", "histograms"):
            value: Mapping[str, Any] = getattr(self, key)
            return value
        raise KeyError(key)

    @classmethod
    def from_core(
        cls,
        raw: Mapping[str, Any],
        *,
        lane_regions: Iterable[str],
        in_flight: int = 0,
        in_flight_ops: int = 0,
        bucket_tokens: Mapping[str, float] | None = None,
        concurrency: Mapping[str, ConcurrencyState] | None = None,
        metrics_enabled: bool = True,
        destination: str = "track_api",
    ) -> Stats:
        """Build from ``Core.stats()``; ``lane_regions[i]`` names lane ``i`` (two lanes may share one)."""
        counters: Mapping[str, int] = raw.get("counters", {})
        gauges: Mapping[str, float] = raw.get("gauges", {})
        histograms: Mapping[str, Mapping[str, Any]] = raw.get("histograms", {})
        grouped: dict[str, dict[str, int]] = {"deduped": {}, "dropped": {}, "failed": {}, "requests": {}}
        for name, value in counters.items():
            prefix, _, rest = name.partition("_")
            group = grouped.get(prefix)
            if group is None or not rest:
                continue
            if prefix == "dropped":
                rest = drop_reason(rest)  # the core's dropped_full is on_drop's queue_full
            group[rest] = group.get(rest, 0) + int(value)
        queued_ops: dict[str, int] = {}
        queued_bytes: dict[str, int] = {}
        for i, region in enumerate(lane_regions):
            queued_ops[region] = queued_ops.get(region, 0) + int(gauges.get(f"lane{i}_ops", 0))
            queued_bytes[region] = queued_bytes.get(region, 0) + int(gauges.get(f"lane{i}_bytes", 0))

        def summary(core_name: str) -> HistogramSummary:
            return HistogramSummary.from_core(histograms.get(core_name))

        def count(name: str) -> int:
            return int(counters.get(name, 0))

        return cls(
            accepted=count("accepted"),
            invalid=count("invalid"),
            deduplicated=_frozen(grouped["deduped"]),
            dropped=_frozen(grouped["dropped"]),
            delivered=count("delivered"),
            failed=_frozen(grouped["failed"]),
            failed_total=count("failed"),
            retried=count("retried"),
            spooled=count("spooled"),
            replayed=count("replayed"),
            requests=_frozen(grouped["requests"]),
            bytes_sent=count("bytes_sent"),
            splits=count("split"),
            overflowed=count("overflowed"),
            queued_ops=_frozen(queued_ops),
            queued_bytes=_frozen(queued_bytes),
            in_flight=in_flight,
            in_flight_ops=in_flight_ops,
            bucket_tokens=_frozen(bucket_tokens or {}),
            concurrency_limit=_frozen({r: c.limit for r, c in (concurrency or {}).items()}),
            requests_in_flight=_frozen({r: c.in_flight for r, c in (concurrency or {}).items()}),
            overflow_ops=int(gauges.get("overflow_ops", 0)),
            metrics_enabled=metrics_enabled,
            destination=destination,
            counters=_frozen(counters),
            gauges=_frozen(gauges),
            histograms=_frozen({name: _frozen(h) for name, h in histograms.items()}),
            request_latency=summary("request_latency_seconds"),
            batch_size=summary("batch_ops"),
            batch_bytes=summary("batch_bytes"),
            delivery_latency=summary("delivery_latency_seconds"),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dicts (JSON-ready)."""
        return dataclasses.asdict(self)

    def format(self) -> str:
        """A few human-readable lines (the demo prints them)."""

        def kv(mapping: Mapping[str, Any]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"

        def number(value: float) -> str:
            # Plain decimals with about three significant digits, never exponent notation (``:.4g``
            # printed a 10 s latency as ``1e+04 ms``); thousands separated from 1,000 up.
            magnitude = abs(value)
            if magnitude >= 100:
                return f"{value:,.0f}"
            if magnitude == 0:
                return "0"
            decimals = min(9, 2 - math.floor(math.log10(magnitude)))
            return f"{value:.{decimals}f}"

        def hist(name: str, h: HistogramSummary, unit: str, scale: float) -> str:
            if not h.count:
                return f"{name}: -"
            return (f"{name}: n={h.count:,} p50={number(h.p50 * scale)}{unit} p95={number(h.p95 * scale)}{unit} "
                    f"p99={number(h.p99 * scale)}{unit} max={number(h.max * scale)}{unit}")

        return "\n".join([
            f"accepted={self.accepted} invalid={self.invalid} delivered={self.delivered} "
            f"failed={self.failed_total} retried={self.retried} spooled={self.spooled} replayed={self.replayed} "
            f"bytes_sent={self.bytes_sent}",
            f"deduplicated: {kv(self.deduplicated)}; dropped: {kv(self.dropped)}; failed: {kv(self.failed)}",
            f"requests: {kv(self.requests)}; queued ops: {kv(self.queued_ops)}; in flight: {self.in_flight}",
            hist("request latency", self.request_latency, " ms", 1e3),
            hist("delivery latency", self.delivery_latency, " ms", 1e3),
            hist("batch size", self.batch_size, " ops", 1.0),
        ])
