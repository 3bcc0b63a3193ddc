"""What a ``ciotrack worker`` exports on ``--metrics-port``: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

Latencies are Prometheus **histograms** (``_bucket{le=...}``), so a fleet's figures aggregate across
replicas with ``histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))``. Their ``le`` bounds are
the embedded tracker's (``ciotrack._core.histogram_bounds``: 1/256 s ... 3840 s, edges of the core's log
buckets), so one ``sum by (le)`` also adds the trackers' ``ciotrack_request_latency_seconds``.

==========================================================  =========  ==============================
``ciotrack_worker_operations_delivered_total``              counter    accepted by Customer.io
``ciotrack_worker_batches_delivered_total``                 counter    entries acknowledged (XACK)
``ciotrack_worker_operations_failed_total{reason}``         counter    rejected (207) / dead-lettered
``ciotrack_worker_requests_total{status}``                  counter    HTTP requests by status/error
``ciotrack_worker_rate_limited_total``                      counter    429 answers
``ciotrack_worker_retries_total``                           counter    requests retried
``ciotrack_worker_batch_splits_total``                      counter    batches split after a 413
``ciotrack_worker_claimed_total``                           counter    entries claimed from peers
``ciotrack_worker_entries_coalesced_total``                 counter    entries sent with others in one request
``ciotrack_worker_dead_letters_total``                      counter    entries moved to the DLQ
``ciotrack_worker_released_total{reason}``                  counter    entries handed back unfinished
``ciotrack_worker_stream_lag``                              gauge      entries not yet read by the group
``ciotrack_worker_stream_pending``                          gauge      entries read, not acknowledged
``ciotrack_worker_dead_letter_entries``                     gauge      length of the dead-letter stream
``ciotrack_worker_in_flight``                               gauge      entries this worker is delivering
``ciotrack_worker_request_latency_seconds``                 histogram  per HTTP request
``ciotrack_worker_delivery_latency_seconds``                histogram  XADD -> XACK, per entry
==========================================================  =========  ==============================

``/healthz`` (liveness) answers 200 while the read loop has turned within the last ``stall`` seconds;
``/readyz`` answers 200 while Redis answered the last call, Customer.io did not refuse the worker's API
key (401/403: delivery is paused then, see :mod:`ciotrack.fleet.credentials`) and the worker is not
draining.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ciotrack._core import histogram_bounds
from ciotrack.lifecycle import block_exit_signals

__all__ = ["WorkerMetrics", "serve"]

log = logging.getLogger("ciotrack.fleet")

# The embedded tracker's bounds (exact there because each is a log-bucket edge), so dashboards sum both.
_LATENCY_BUCKETS = tuple(histogram_bounds("request_latency_seconds"))
_DELIVERY_BUCKETS = tuple(histogram_bounds("delivery_latency_seconds"))


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of their own; also a ``delivery.Recorder``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        ns = "ciotrack_worker"
        r = self.registry
        self.ops_delivered = Counter(f"{ns}_operations_delivered", "operations accepted", registry=r)
        self.batches_delivered = Counter(f"{ns}_batches_delivered", "entries acknowledged", registry=r)
        self.ops_failed = Counter(f"{ns}_operations_failed", "operations rejected or dead-lettered",
                                  ["reason"], registry=r)
        self.requests = Counter(f"{ns}_requests", "HTTP requests by status", ["status"], registry=r)
        self.rate_limited = Counter(f"{ns}_rate_limited", "429 answers", registry=r)
        self.retries = Counter(f"{ns}_retries", "requests retried", registry=r)
        self.splits = Counter(f"{ns}_batch_splits", "batches split after a 413", registry=r)
        self.coalesced = Counter(f"{ns}_entries_coalesced", "entries sent together with others in one request",
                                 registry=r)
        self.claimed = Counter(f"{ns}_claimed", "entries claimed from other consumers", registry=r)
        self.dead_letters = Counter(f"{ns}_dead_letters", "entries moved to the dead-letter stream", registry=r)
        self.released = Counter(f"{ns}_released", "entries handed back unfinished", ["reason"], registry=r)
        self.lag = Gauge(f"{ns}_stream_lag", "entries not yet read by the group", registry=r)
        self.pending = Gauge(f"{ns}_stream_pending", "entries read but not acknowledged", registry=r)
        self.dead_length = Gauge(f"{ns}_dead_letter_entries", "length of the dead-letter stream", registry=r)
        self.in_flight = Gauge(f"{ns}_in_flight", "entries being delivered by this worker", registry=r)
        self.request_latency = Histogram(f"{ns}_request_latency_seconds", "per HTTP request",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.delivery_latency = Histogram(f"{ns}_delivery_latency_seconds", "XADD to XACK per entry",
                                          buckets=_DELIVERY_BUCKETS, registry=r)

    # -- delivery.Recorder ---------------------------------------------------------------------

    def incr(self, counter: str, n: int = 1) -> None:
        if counter.startswith("requests_"):
            status = counter[len("requests_"):]
            self.requests.labels(status).inc(n)
            if status == "429":
                self.rate_limited.inc(n)
        elif counter == "retried":
            self.retries.inc(n)
        elif counter == "split":
            self.splits.inc(n)

    def observe(self, histogram: str, value: float) -> None:
        if histogram == "request_latency_seconds":
            self.request_latency.observe(value)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class Probes:
    """The liveness and readiness facts the worker keeps up to date."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.last_loop = time.monotonic()
        self.redis_ok = False
        self.draining = False
        self.credentials_ok = True
        """False while Customer.io refuses the worker's API key (:mod:`ciotrack.fleet.credentials`)."""

    def tick(self) -> None:
        self.last_loop = time.monotonic()

    def live(self) -> bool:
        return time.monotonic() - self.last_loop < self.stall

    def ready(self) -> bool:
        return self.redis_ok and self.credentials_ok and not self.draining and self.live()


class _DualStackServer(ThreadingHTTPServer):
    """Listens on IPv6 and IPv4 at once (``::`` with ``IPV6_V6ONLY`` off): kubelet probes and Prometheus
    reach a pod by its IPv6 address on an IPv6-only cluster, by its IPv4 address elsewhere."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve(metrics: WorkerMetrics, probes: Probes, port: int, host: str | None = None) -> ThreadingHTTPServer:
    """Start the metrics/probe server on a daemon thread; returns it (``shutdown()`` to stop). With no
    ``host``: every address, IPv6 and IPv4 (IPv4 only where the kernel has no IPv6)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                ok = probes.live()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
            elif path == "/readyz":
                ok = probes.ready()
                self._answer(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._answer(404, b"not found\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would flood the log

    server: ThreadingHTTPServer
    if host is not None:
        server = ThreadingHTTPServer((host, port), Handler)
    else:
        try:
            server = _DualStackServer(("::", port), Handler)
        except OSError:  # IPv6 disabled in this kernel or container
            server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    def serve() -> None:
        block_exit_signals()  # this thread and the request threads it starts (they inherit the mask)
        server.serve_forever()

    threading.Thread(target=serve, name="ciotrack-worker-metrics", daemon=True).start()
    return server
