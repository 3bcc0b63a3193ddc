"""Prometheus export of a tracker's :class:`~ciotrack.stats.Stats` (``pip install ciotrack[prometheus]``).

    from prometheus_client import REGISTRY, start_http_server
    from ciotrack.metrics import PrometheusCollector

    REGISTRY.register(PrometheusCollector(tracker))
    start_http_server(9100)

A custom collector (prometheus_client's Collector protocol): nothing is recorded twice, each scrape
reads one ``tracker.stats()`` snapshot. ``prometheus_client`` is imported only when a collector is
made, so ``ciotrack`` itself never needs it.

Histograms are exported as Prometheus **histograms** (``_bucket{le=...}``, ``_sum``, ``_count``) plus a
``<name>_max`` gauge, so a fleet's figures aggregate:
``histogram_quantile(0.99, sum by (le) (rate(ciotrack_request_latency_seconds_bucket[5m])))`` over every
process, embedded trackers and ``ciotrack worker`` replicas alike (the worker's latency histograms use the
same ``le`` bounds). The core keeps ~560 log buckets (1/8 of a power of two wide) and turns them into
cumulative counts at fixed bounds when the snapshot is taken, never while recording. Every bound is an
edge of those buckets, which is why they read 0.00390625 (1/256 s), 0.046875, 0.09375 ... rather than
0.005, 0.05, 0.1: a decimal bound falls inside a log bucket, whose values could not be split into
"<= le" and "> le", and the count would be approximate. At an edge the count is exact. The bounds
(``ciotrack._core.histogram_bounds(name)``): seconds 1/256 ... 3840 (23 bounds), operations per batch
1 ... 10240, body bytes 256 ... 512 KiB. Counts are cumulative since the tracker started. The quantiles
(p50/p95/p99) stay in :class:`~ciotrack.stats.Stats` for code that reads them.

Metric names (``ciotrack`` is the default ``namespace``):

==================================================  ==========  ===================================
``ciotrack_operations_accepted_total``              counter     calls that queued an operation
``ciotrack_operations_invalid_total``               counter     calls refused for bad input
``ciotrack_operations_deduplicated_total{kind}``    counter     skipped duplicates (identify/event)
``ciotrack_operations_dropped_total{reason}``       counter     dropped before sending
``ciotrack_operations_delivered_total``             counter     acknowledged by Customer.io
``ciotrack_operations_failed_total{reason}``        counter     finally failed
``ciotrack_operations_spooled_total``               counter     handed to the disk spool
``ciotrack_operations_replayed_total``              counter     replayed from the disk spool
``ciotrack_retries_total``                          counter     requests retried
``ciotrack_requests_total{status}``                 counter     HTTP requests by status (or error)
``ciotrack_sent_bytes_total``                       counter     accepted request body bytes
``ciotrack_batch_splits_total``                     counter     batches split after a 413
``ciotrack_queued_operations{region}``              gauge       operations waiting in the queue
``ciotrack_queued_bytes{region}``                   gauge       bytes waiting in the queue
``ciotrack_in_flight_batches``                      gauge       batches being sent or retried
``ciotrack_in_flight_operations``                   gauge       operations in those batches
``ciotrack_rate_limit_tokens{region}``              gauge       token bucket level
``ciotrack_concurrency_limit{region}``              gauge       requests allowed in flight (adaptive)
``ciotrack_requests_in_flight{region}``             gauge       requests being sent now
``ciotrack_overflow_operations``                    gauge       overflow list awaiting the spool
``ciotrack_request_latency_seconds``                histogram   per HTTP request
``ciotrack_delivery_latency_seconds``               histogram   call -> acknowledgement, per op
``ciotrack_batch_operations``                       histogram   operations per accepted batch
``ciotrack_batch_size_bytes``                       histogram   body bytes per accepted batch
``ciotrack_<histogram>_max``                        gauge       largest value recorded in each
==================================================  ==========  ===================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from ciotrack._core import histogram_bounds
from ciotrack.stats import HistogramSummary, Stats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["PrometheusCollector"]



class StatsSource(Protocol):
    """Anything with ``stats() -> Stats``: a :class:`~ciotrack.Tracker`, a ``CaptureTracker``."""

    def stats(self) -> Stats: ...


class PrometheusCollector:
    """Collects one tracker's stats at every scrape.

    ``namespace`` prefixes every name: a process with several trackers registers one collector per
    tracker, each with its own ``namespace``, in one registry (the same names twice would be duplicate
    series; :meth:`describe` lets every registry refuse that at ``register()`` with a ``ValueError``,
    not only one with ``auto_describe``). ``labels`` are constant labels added to every sample, e.g.
    ``{"service": "billing"}``; they do not make names distinct.
    """

    def __init__(self, tracker: StatsSource, *, namespace: str = "ciotrack",
                 labels: Mapping[str, str] | None = None) -> None:
        try:
            import prometheus_client  # noqa: F401  (the optional extra: fail here, not at the first scrape)
        except ImportError as exc:
            raise ImportError("ciotrack.metrics needs prometheus_client: pip install 'ciotrack[prometheus]'") from exc
        if not namespace or not namespace.replace("_", "").isalnum() or namespace[0].isdigit():
            raise ValueError(f"namespace must be a Prometheus name prefix, got {namespace!r}")
        self._tracker = tracker
        self._namespace = namespace
        self._label_names = tuple(labels or {})
        self._label_values = tuple((labels or {}).values())

    def __repr__(self) -> str:
        labels = dict(zip(self._label_names, self._label_values, strict=True))
        return f"PrometheusCollector(namespace={self._namespace!r}, labels={labels!r})"

    def describe(self) -> Iterator[Metric]:
        """The metric families (what ``register()`` checks for names already taken in its registry)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        # prometheus_client's own le formatting (untyped there), so the labels match the worker's.
        format_le: Callable[[float], str] = floatToGoString

        stats = self._tracker.stats()
        ns = self._namespace
        names, values = self._label_names, self._label_values

        def counter(name: str, doc: str, value: int) -> Metric:
            family = CounterMetricFamily(f"{ns}_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        def labelled(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str, label: str,
                     by_label: Mapping[str, float]) -> Metric:
            family = kind(f"{ns}_{name}", doc, labels=(*names, label))
            for key, value in sorted(by_label.items()):
                family.add_metric((*values, key), value)
            return family

        def gauge(name: str, doc: str, value: float) -> Metric:
            family = GaugeMetricFamily(f"{ns}_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        def histogram(name: str, core_name: str, doc: str, h: HistogramSummary) -> Iterator[Metric]:
            family = HistogramMetricFamily(f"{ns}_{name}", doc, labels=names)
            # Nothing recorded yet: the same bounds with zero counts, so the series exist from the start.
            cumulative = h.buckets or tuple((le, 0) for le in histogram_bounds(core_name))
            buckets = [(format_le(le), n) for le, n in cumulative] + [("+Inf", h.count)]
            family.add_metric(values, buckets, h.sum)
            yield family
            yield gauge(f"{name}_max", f"Largest value recorded in {ns}_{name}", h.max)

        yield counter("operations_accepted", "Calls that queued an operation", stats.accepted)
        yield counter("operations_invalid", "Calls refused for bad input (they raised)", stats.invalid)
        yield labelled(CounterMetricFamily, "operations_deduplicated", "Calls skipped as duplicates", "kind",
                       stats.deduplicated)
        yield labelled(CounterMetricFamily, "operations_dropped", "Operations dropped before sending", "reason",
                       stats.dropped)
        yield counter("operations_delivered", "Operations acknowledged by Customer.io", stats.delivered)
        yield labelled(CounterMetricFamily, "operations_failed", "Operations that finally failed", "reason",
                       stats.failed)
        yield counter("operations_spooled", "Operations handed to the disk spool", stats.spooled)
        yield counter("operations_replayed", "Operations replayed from the disk spool", stats.replayed)
        yield counter("retries", "Requests retried after a transient failure", stats.retried)
        yield labelled(CounterMetricFamily, "requests", "HTTP requests by status ('error': no response)", "status",
                       stats.requests)
        yield counter("sent_bytes", "Request body bytes accepted by Customer.io", stats.bytes_sent)
        yield counter("batch_splits", "Batches split in two after a 413", stats.splits)
        yield labelled(GaugeMetricFamily, "queued_operations", "Operations waiting in the queue", "region",
                       stats.queued_ops)
        yield labelled(GaugeMetricFamily, "queued_bytes", "Encoded bytes waiting in the queue", "region",
                       stats.queued_bytes)
        yield gauge("in_flight_batches", "Batches being sent or waiting to be retried", stats.in_flight)
        yield gauge("in_flight_operations", "Operations in batches being sent or waiting to be retried",
                    stats.in_flight_ops)
        yield labelled(GaugeMetricFamily, "rate_limit_tokens", "Requests the rate limit allows now", "region",
                       stats.bucket_tokens)
        yield labelled(GaugeMetricFamily, "concurrency_limit", "Requests allowed in flight now (adaptive)",
                       "region", stats.concurrency_limit)
        yield labelled(GaugeMetricFamily, "requests_in_flight", "Requests being sent now", "region",
                       stats.requests_in_flight)
        yield gauge("overflow_operations", "Operations refused by a full queue, awaiting the spool",
                    stats.overflow_ops)
        yield from histogram("request_latency_seconds", "request_latency_seconds", "Seconds per HTTP request",
                             stats.request_latency)
        yield from histogram("delivery_latency_seconds", "delivery_latency_seconds",
                             "Seconds from the call to Customer.io's acknowledgement", stats.delivery_latency)
        yield from histogram("batch_operations", "batch_ops", "Operations per accepted batch", stats.batch_size)
        yield from histogram("batch_size_bytes", "batch_bytes", "Body bytes per accepted batch", stats.batch_bytes)
