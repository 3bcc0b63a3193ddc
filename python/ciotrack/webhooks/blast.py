"""Blast signed reporting webhooks at an endpoint and report its answer latency.

``ciotrack loadtest --webhooks URL`` calls ``add_arguments`` and ``run`` (and, until that lands,
``ciotrack webhooks-blast URL``). Open model: request ``i`` is due at ``start + i / rate`` whatever
the endpoint does, spread over ``--webhook-connections`` keep-alive connections; a slow endpoint
shows up as latency and schedule lag, not as a lower rate. Latency is measured from the moment a
request is written to the moment its answer is read; the lag (start - due time) says whether this
client kept up. Percentiles are compared with the 50 ms processing budget and Customer.io's 4 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ciotrack.webhooks.samples import METRICS_BY_TYPE, OBJECT_TYPES, event_payload
from ciotrack.webhooks.signature import sign

BUDGET_MS = 50.0  # the performance guidance: webhook processing < 50 ms
CUSTOMERIO_TIMEOUT_MS = 4000.0  # Customer.io's answer deadline


class Poster:
    """POSTs to one URL over a keep-alive connection (reconnecting after an error). One thread."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self._timeout)
        conn.connect()
        return conn

    def post(self, body: bytes, headers: dict[str, str]) -> int | None:
        """The answer's status, or None after a connection error (the next call reconnects)."""
        for attempt in (0, 1):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.request("POST", self._path, body, headers)
                response = self._conn.getresponse()
                response.read()
                if response.will_close:
                    self.close()
                return response.status
            except (OSError, http.client.HTTPException):
                self.close()
                # A keep-alive connection the server closed while idle: one fresh try.
                if attempt:
                    return None
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--webhooks URL`` and the ``--webhook-*`` options."""
    group = parser.add_argument_group("reporting webhooks")
    group.add_argument("--webhooks", metavar="URL", help="blast signed reporting webhooks at this endpoint")
    group.add_argument("--webhook-secret", default=os.environ.get("CIOTRACK_WEBHOOK_SECRET", "ciotrack-test-secret"),
                       help="signing key (default $CIOTRACK_WEBHOOK_SECRET or a test key)")
    group.add_argument("--webhook-rate", type=float, default=1000.0, help="webhooks per second (default 1000)")
    group.add_argument("--webhook-duration", type=float, default=5.0, help="seconds (default 5)")
    group.add_argument("--webhook-duplicates", type=float, default=0.0, metavar="SHARE",
                       help="share re-sent with an earlier event_id (default 0)")
    group.add_argument("--webhook-forged", type=float, default=0.0, metavar="SHARE",
                       help="share sent with a wrong signature; a 401 is their expected answer (default 0)")
    group.add_argument("--webhook-size", type=int, default=0, metavar="BYTES",
                       help="pad bodies to about this size (default: natural, ~400 bytes)")
    group.add_argument("--webhook-connections", type=int, default=8, help="keep-alive connections (default 8)")
    group.add_argument("--webhook-budget-ms", type=float, default=BUDGET_MS,
                       help="p99 above this fails the run (default 50)")
    group.add_argument("--webhook-report", metavar="FILE", help="write a JSON report here")
    group.add_argument("--webhook-seed", type=int, help="seed of the payload mix")


class _Plan:
    """Pre-built bodies (signing happens at send time: the timestamp must be fresh)."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        rng = random.Random(args.webhook_seed)
        self.kinds: list[str] = []
        self.bodies: list[bytes] = []
        ids: list[dict[str, Any]] = []
        for _ in range(total):
            roll = rng.random()
            if ids and roll < args.webhook_duplicates:
                payload = rng.choice(ids)  # an earlier genuine event, re-signed when sent
                kind = "duplicate"
            else:
                object_type = rng.choice(OBJECT_TYPES)
                payload = event_payload(object_type, rng.choice(METRICS_BY_TYPE[object_type]),
                                        customer_id=str(rng.randint(1, 10**6)), pad_to=args.webhook_size)
                kind = "forged" if roll < args.webhook_duplicates + args.webhook_forged else "event"
                if kind == "event":
                    ids.append(payload)
            self.kinds.append(kind)
            self.bodies.append(json.dumps(payload, separators=(",", ":")).encode())


def blast(args: argparse.Namespace) -> dict[str, Any]:
    """Run the blast described by ``args``; returns the report (also what ``run`` prints)."""
    if args.webhook_rate <= 0 or args.webhook_duration <= 0 or args.webhook_connections < 1:
        raise ValueError("--webhook-rate, --webhook-duration and --webhook-connections must be positive")
    total = max(1, int(args.webhook_rate * args.webhook_duration))
    plan = _Plan(args, total)
    secret: str = args.webhook_secret
    connections = min(args.webhook_connections, total)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    lags: list[list[float]] = [[] for _ in range(connections)]
    statuses: list[dict[str, int]] = [{} for _ in range(connections)]
    unexpected: list[int] = [0] * connections
    start = time.perf_counter() + 0.2  # every connection's first request is due together
    interval = 1.0 / args.webhook_rate

    def worker(slot: int) -> None:
        poster = Poster(args.webhooks)
        try:
            for i in range(slot, total, connections):
                due = start + i * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                body, kind = plan.bodies[i], plan.kinds[i]
                ts = str(int(time.time()))
                key = secret + "-forged" if kind == "forged" else secret
                headers = {"X-CIO-Timestamp": ts, "X-CIO-Signature": sign(body, key, ts),
                           "Content-Type": "application/json", "User-Agent": "ciotrack-webhooks-blast"}
                sent = time.perf_counter()
                status = poster.post(body, headers)
                done = time.perf_counter()
                latencies[slot].append(done - sent)
                lags[slot].append(sent - due)
                name = "error" if status is None else str(status)
                statuses[slot][name] = statuses[slot].get(name, 0) + 1
                expected = status == 401 if kind == "forged" else status is not None and 200 <= status < 300
                if not expected:
                    unexpected[slot] += 1
        finally:
            poster.close()

    threads = [threading.Thread(target=worker, args=(n,), name=f"ciotrack-blast-{n}", daemon=True)
               for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ms = sorted(v * 1000 for slot in latencies for v in slot)
    lag_ms = sorted(v * 1000 for slot in lags for v in slot)
    by_status: dict[str, int] = {}
    for slot_statuses in statuses:
        for name, count in slot_statuses.items():
            by_status[name] = by_status.get(name, 0) + count
    kinds = {k: plan.kinds.count(k) for k in ("event", "duplicate", "forged")}
    return {
        "url": args.webhooks, "rate": args.webhook_rate, "duration_s": args.webhook_duration,
        "requests": len(ms), "achieved_rate": len(ms) / elapsed if elapsed > 0 else 0.0,
        "kinds": kinds, "by_status": by_status, "unexpected": sum(unexpected),
        "body_bytes_mean": sum(map(len, plan.bodies)) / len(plan.bodies),
        "latency_ms": {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
                       "max": ms[-1] if ms else 0.0},
        "schedule_lag_ms": {"p50": percentile(lag_ms, 50), "p99": percentile(lag_ms, 99),
                            "max": lag_ms[-1] if lag_ms else 0.0},
        "budget_ms": args.webhook_budget_ms, "customerio_timeout_ms": CUSTOMERIO_TIMEOUT_MS,
    }


def format_report(report: dict[str, Any]) -> str:
    lat, lag = report["latency_ms"], report["schedule_lag_ms"]
    budget, limit = report["budget_ms"], report["customerio_timeout_ms"]
    lines = [
        f"webhooks -> {report['url']}: {report['requests']} requests at {report['achieved_rate']:.0f}/s "
        f"(asked {report['rate']:g}/s), {report['body_bytes_mean']:.0f} B bodies",
        f"  latency ms  p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}",
        f"  p99 vs budget {budget:g} ms: {'within' if lat['p99'] <= budget else 'OVER'}; "
        f"max vs Customer.io's {limit / 1000:g} s: {'within' if lat['max'] <= limit else 'OVER'}",
        f"  schedule lag ms  p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}",
        f"  statuses {json.dumps(report['by_status'], sort_keys=True)}  kinds {json.dumps(report['kinds'])}  "
        f"unexpected answers {report['unexpected']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Blast, print the report, write ``--webhook-report``; 1 if any answer was unexpected (a non-2xx
    for a genuine webhook, not a 401 for a forged one) or p99 is over the budget."""
    if not args.webhooks:
        print("ciotrack: --webhooks URL is required", file=sys.stderr)
        return 2
    try:
        report = blast(args)
    except ValueError as err:
        print(f"ciotrack: {err}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    if args.webhook_report:
        with open(args.webhook_report, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    failed = report["unexpected"] > 0 or report["latency_ms"]["p99"] > report["budget_ms"]
    return 1 if failed else 0


class _PositionalURL(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values:
            namespace.webhooks = values


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``ciotrack webhooks-blast [URL] [--webhook-...]`` (until ``ciotrack loadtest --webhooks`` lands)."""
    parser.add_argument("url", nargs="?", action=_PositionalURL, help="the endpoint (or --webhooks URL)")
    add_arguments(parser)
