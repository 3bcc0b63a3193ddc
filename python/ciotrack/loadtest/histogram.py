"""Latency histograms: HdrHistogram (the ``hdrhistogram`` package), one per metric per 1 s interval,
merged for the totals. Percentiles are never averaged across intervals: the run's p95 comes from the
merged histogram, which holds every sample.

Values are recorded as integers of ``1 / units_per_ms`` ms (microseconds by default: 1 µs to 10 min;
nanoseconds for the enqueue cost, which is a few µs: 1 ns to 0.6 s) at 3 significant figures (0.1 %
relative precision); a value outside the range is clamped (``record_value`` would silently drop it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LatencyHistogram", "summarize"]

_LOWEST_US = 1
_HIGHEST_US = 600_000_000
_FIGURES = 3


class LatencyHistogram:
    """Milliseconds in, milliseconds out; HdrHistogram underneath (imported lazily: an extra)."""

    __slots__ = ("_h", "_per_ms")

    def __init__(self, units_per_ms: float = 1000.0) -> None:
        from hdrh.histogram import HdrHistogram

        self._per_ms = units_per_ms
        self._h: Any = HdrHistogram(_LOWEST_US, _HIGHEST_US, _FIGURES)

    def record_ms(self, ms: float, count: int = 1) -> None:
        value = int(ms * self._per_ms)
        self._h.record_value(min(max(value, _LOWEST_US), _HIGHEST_US), count)

    def add(self, other: LatencyHistogram) -> None:
        # hdrh's add() takes the other's min even when it is empty (0): skip empty ones.
        if other.count:
            self._h.add(other._h)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile_ms(self, pct: float) -> float | None:
        if not self.count:
            return None
        return float(self._h.get_value_at_percentile(pct)) / self._per_ms

    def aggregate_ms(self, aggregation: str, percentile: float | None = None) -> float | None:
        """k6's trend aggregations: ``avg``, ``min``, ``med``, ``max``, ``p(N)``."""
        if not self.count:
            return None
        if percentile is not None:
            return self.percentile_ms(percentile)
        if aggregation == "avg":
            return float(self._h.get_mean_value()) / self._per_ms
        if aggregation == "min":
            return float(self._h.get_min_value()) / self._per_ms
        if aggregation == "max":
            return float(self._h.get_max_value()) / self._per_ms
        if aggregation == "med":
            return self.percentile_ms(50.0)
        raise ValueError(f"unknown trend aggregation {aggregation!r}")

    def encode(self) -> str:
        """HdrHistogram V2 compressed base64 (``HdrHistogram.decode`` reads it back, in any language)."""
        encoded = self._h.encode()
        return encoded.decode("ascii") if isinstance(encoded, bytes) else str(encoded)


def summarize(hist: LatencyHistogram, percentiles: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)) -> dict[str, Any]:
    """``{count, min, avg, max, p50, p90, p95, p99}`` in ms (None values without samples)."""
    out: dict[str, Any] = {"count": hist.count}
    if not hist.count:
        out.update({k: None for k in ("min", "avg", "max")})
        out.update({f"p{p:g}": None for p in percentiles})
        return out
    values = hist._h.get_percentile_to_value_dict(list(percentiles))
    out["min"] = hist.aggregate_ms("min")
    out["avg"] = round(float(hist.aggregate_ms("avg") or 0.0), 3)
    out["max"] = hist.aggregate_ms("max")
    for p in percentiles:
        out[f"p{p:g}"] = float(values[p]) / hist._per_ms
    return out
