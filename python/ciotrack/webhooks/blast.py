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
import collections
import gc
import http.client
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ciotrack.webhooks.samples import METRICS_BY_TYPE, OBJECT_TYPES, event_payload
from ciotrack.webhooks.signature import sign

BUDGET_MS = 50.0  # the performance guidance: webhook processing < 50 ms
CUSTOMERIO_TIMEOUT_MS = 4000.0  # Customer.io's answer deadline
REQUEST_TIMEOUT_S = 10.0  # an answer later than this counts as an error
# Linux's SO_TIMESTAMPNS (also the control message's type): the kernel stamps each received segment
# with the wall-clock time it arrived. Python's socket module does not export the constant.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_STAMP = struct.Struct("qq")  # struct timespec: seconds, nanoseconds


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


class _Connection:
    """One keep-alive connection of the blaster: at most one request in flight."""

    __slots__ = ("sock", "buffer", "index", "sent_at", "sent_ns", "arrived_ns", "reused", "request")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.index = -1
        self.sent_at = 0.0
        self.sent_ns = 0  # wall clock (the kernel's arrival stamps are wall clock too)
        self.arrived_ns = 0  # the kernel's arrival time of the last segment read, 0 if unknown
        self.reused = False  # the request went out on a connection that had answered before
        self.request = b""


def _response_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


_ANCILLARY_SPACE = socket.CMSG_SPACE(_STAMP.size) * 4


def _low_descriptors(connections: int) -> bool:
    """Whether ``connections`` new sockets would get descriptors select() takes (below FD_SETSIZE,
    1024): the kernel hands out the lowest free numbers, so a probe's number says where they start."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return probe.fileno() + 2 * connections < 1000


def _answered(by_status: dict[str, int]) -> int:
    """How many answers came back at all (any status, not a connection error)."""
    return sum(n for name, n in by_status.items() if name != "error")


def blast(args: argparse.Namespace) -> dict[str, Any]:
    """Run the blast described by ``args``; returns the report (also what ``run`` prints).

    The garbage collector is off meanwhile: a collection in this process (a full one sweeps the
    caller's whole heap, tens of ms inside a test session) would delay sends and reads and count as
    the endpoint's latency. The blast makes no reference cycles per request (its few closures are
    collected once the collector is back on).

    One thread drives every connection through a selector: with a thread per connection, the time
    a thread waits for the GIL after its answer arrived (up to the 5 ms switch interval) would be
    counted as the endpoint's latency. Where the kernel stamps arrivals (Linux), a second figure,
    ``arrival_ms``, ends at the answer's arrival on this machine's socket instead of at this thread
    reading it: without the time this process waited for a CPU, which a remote sender would not
    share with the endpoint."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _blast(args)
    finally:
        if collecting:
            gc.enable()


def _blast(args: argparse.Namespace) -> dict[str, Any]:
    if args.webhook_rate <= 0 or args.webhook_duration <= 0 or args.webhook_connections < 1:
        raise ValueError("--webhook-rate, --webhook-duration and --webhook-connections must be positive")
    parts = urllib.parse.urlsplit(args.webhooks)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the blaster speaks plain http to a local endpoint, not {args.webhooks!r}")
    host, port = parts.hostname, parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head_template = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: ciotrack-webhooks-blast\r\n"
                     f"Content-Type: application/json\r\n").encode()
    total = max(1, int(args.webhook_rate * args.webhook_duration))
    plan = _Plan(args, total)
    secret: str = args.webhook_secret
    latencies: list[float] = []
    arrivals: list[float] = []
    lags: list[float] = []
    by_status: dict[str, int] = {}
    unexpected = 0
    interval = 1.0 / args.webhook_rate
    # select(), not epoll: epoll_wait takes whole milliseconds (Python rounds a timeout up), so the
    # blaster woke up to 1 ms after a request was due and then sent two at once, a burst that showed
    # up as the endpoint's tail. select() waits in microseconds; with a few connections it costs
    # nothing. It takes descriptors below 1024 only: in a process with that many open, epoll.
    selector = selectors.SelectSelector() if _low_descriptors(args.webhook_connections) else selectors.DefaultSelector()
    idle = [_Connection() for _ in range(min(args.webhook_connections, total))]
    due_queue: collections.deque[int] = collections.deque()

    def finish(conn: _Connection, status: int | None) -> None:
        nonlocal unexpected
        i = conn.index
        latencies.append(time.perf_counter() - conn.sent_at)
        if status is not None and conn.arrived_ns > conn.sent_ns > 0:
            arrivals.append((conn.arrived_ns - conn.sent_ns) / 1e9)
        name = "error" if status is None else str(status)
        by_status[name] = by_status.get(name, 0) + 1
        expected = status == 401 if plan.kinds[i] == "forged" else status is not None and 200 <= status < 300
        unexpected += not expected
        conn.index = -1
        idle.append(conn)

    def drop(conn: _Connection) -> None:
        if conn.sock is not None:
            selector.unregister(conn.sock)
            conn.sock.close()
            conn.sock = None
        conn.buffer.clear()

    def send(conn: _Connection, i: int) -> None:
        body = plan.bodies[i]
        ts = str(int(time.time()))
        key = secret + "-forged" if plan.kinds[i] == "forged" else secret
        request = b"".join((head_template, b"Content-Length: %d\r\nX-CIO-Timestamp: %s\r\nX-CIO-Signature: %s\r\n\r\n"
                            % (len(body), ts.encode(), sign(body, key, ts).encode()), body))
        conn.index = i
        conn.arrived_ns = 0
        conn.sent_ns = time.time_ns()
        conn.sent_at = time.perf_counter()
        lags.append(conn.sent_at - (start + i * interval))
        transmit(conn, request)

    def transmit(conn: _Connection, request: bytes) -> None:
        conn.request = request
        try:
            conn.reused = conn.sock is not None
            if conn.sock is None:
                conn.sock = socket.create_connection((host, port), timeout=10)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if SO_TIMESTAMPNS is not None:
                    try:
                        conn.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    except OSError:
                        pass
                selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.sock.sendall(request)
        except OSError:
            drop(conn)
            finish(conn, None)

    def receive(conn: _Connection) -> None:
        assert conn.sock is not None
        try:
            chunk, ancillary, _, _ = conn.sock.recvmsg(65536, _ANCILLARY_SPACE)
        except OSError:
            chunk, ancillary = b"", []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _STAMP.size:
                seconds, nanoseconds = _STAMP.unpack_from(data)
                conn.arrived_ns = seconds * 1_000_000_000 + nanoseconds
        if not chunk:
            if conn.index >= 0 and conn.reused and not conn.buffer:
                # The server closed an idle keep-alive connection as we reused it: resend once on a
                # fresh one, as HTTP clients do (the latency still counts from the first send).
                drop(conn)
                transmit(conn, conn.request)
                return
            # Closed: an answer without a length ends here (HTTP/1.0 style); otherwise it is lost.
            head_end = conn.buffer.find(b"\r\n\r\n")
            status = int(bytes(conn.buffer[:head_end]).split(b" ", 2)[1]) if head_end > 0 else None
            drop(conn)
            if conn.index >= 0:
                finish(conn, status)
            return
        conn.buffer += chunk
        end = conn.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(conn.buffer[:end])
        length = _response_length(head)
        if length is None or len(conn.buffer) < end + 4 + length:
            return  # more to come (or, without a length, the close ends it)
        status = int(head.split(b" ", 2)[1])
        lowered = head.lower()
        closes = b"connection: close" in lowered or (
            lowered.startswith(b"http/1.0") and b"connection: keep-alive" not in lowered)
        del conn.buffer[: end + 4 + length]
        if closes:
            drop(conn)
        if conn.index >= 0:
            finish(conn, status)

    # The kernel stamps arrivals only while some socket asks for stamps, and turns stamping on a
    # moment after the first one does (deferred work): this socket asks from before the first request
    # to after the last, so no answer arrives unstamped between two connections.
    stamp_keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if SO_TIMESTAMPNS is not None:
        try:
            stamp_keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass
    start = time.perf_counter() + 0.1
    next_i = 0
    while len(latencies) < total:
        now = time.perf_counter()
        while next_i < total and start + next_i * interval <= now:
            due_queue.append(next_i)
            next_i += 1
        while due_queue and idle:
            send(idle.pop(), due_queue.popleft())
        if len(latencies) >= total:
            break
        wait = (start + next_i * interval - time.perf_counter()) if next_i < total and idle else 0.5
        ready = selector.select(max(0.0, wait))
        for key, _ in ready:
            receive(key.data)
        if not ready:
            late = time.perf_counter() - REQUEST_TIMEOUT_S
            for key in list(selector.get_map().values()):
                conn = key.data
                if conn.index >= 0 and conn.sent_at < late:
                    drop(conn)
                    finish(conn, None)
    elapsed = time.perf_counter() - start
    for conn in [k.data for k in list(selector.get_map().values())]:
        drop(conn)
    selector.close()
    stamp_keeper.close()
    ms = sorted(v * 1000 for v in latencies)
    arrival_ms = sorted(v * 1000 for v in arrivals)
    lag_ms = sorted(v * 1000 for v in lags)
    kinds = {k: plan.kinds.count(k) for k in ("event", "duplicate", "forged")}
    return {
        "url": args.webhooks, "rate": args.webhook_rate, "duration_s": args.webhook_duration,
        "requests": len(ms), "achieved_rate": len(ms) / elapsed if elapsed > 0 else 0.0,
        "kinds": kinds, "by_status": by_status, "unexpected": unexpected,
        "body_bytes_mean": sum(map(len, plan.bodies)) / len(plan.bodies),
        "latency_ms": {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
                       "max": ms[-1] if ms else 0.0},
        # None where the kernel gave no arrival stamps (not Linux), or for some answers only.
        "arrival_ms": {"p50": percentile(arrival_ms, 50), "p95": percentile(arrival_ms, 95),
                       "p99": percentile(arrival_ms, 99), "max": arrival_ms[-1]}
        if arrivals and len(arrivals) == _answered(by_status) else None,
        "schedule_lag_ms": {"p50": percentile(lag_ms, 50), "p99": percentile(lag_ms, 99),
                            "max": lag_ms[-1] if lag_ms else 0.0},
        "budget_ms": args.webhook_budget_ms, "customerio_timeout_ms": CUSTOMERIO_TIMEOUT_MS,
    }


def format_report(report: dict[str, Any]) -> str:
    lat, lag, arr = report["latency_ms"], report["schedule_lag_ms"], report.get("arrival_ms")
    budget, limit = report["budget_ms"], report["customerio_timeout_ms"]
    lines = [
        f"webhooks -> {report['url']}: {report['requests']} requests at {report['achieved_rate']:.0f}/s "
        f"(asked {report['rate']:g}/s), {report['body_bytes_mean']:.0f} B bodies",
        f"  latency ms  p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}",
        *([f"  to arrival  p50 {arr['p50']:.3f}  p95 {arr['p95']:.3f}  p99 {arr['p99']:.3f}  max {arr['max']:.3f}"
           " (kernel's arrival stamp: without this client's own wait for a CPU)"] if arr else []),
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
