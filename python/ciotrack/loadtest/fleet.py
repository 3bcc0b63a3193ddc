"""The fleet target of ``ciotrack loadtest`` (``--redis-url URL --workers N``): the load generator's tracker
writes batches to a Redis stream, and N local ``ciotrack worker`` subprocesses deliver them to the receiver
(the spawned emulator, or ``--endpoint``) under one rate limit shared through Redis.

Without ``--redis-url`` a throwaway ``redis-server`` (:class:`ciotrack.fleet.local_redis.LocalRedis`:
AOF on, ``appendfsync always``) is started in a temp dir and stopped at the end. Every run has its own
key prefix (``ciotrack-lt-<random>``), so its stream, consumer group and limiter never mix with another
run's or with a production fleet's on the same Redis.

What is observed where (:class:`FleetTarget` is the driver's :class:`~ciotrack.loadtest.driver.FleetProbe`):

* operations delivered (what ``delivery_duration`` samples wait for, and ``delivered``/``lost``): the
  emulator's own count of stored operations minus the redeliveries it recognised (``operations -
  duplicates``), polled every 20 ms; with ``--endpoint`` the workers' ``operations_delivered`` counters
  (their Prometheus ``/metrics``), read at most every 100 ms;
* requests by status, 429s, retries, failed operations: the workers' ``/metrics`` (each worker serves
  them on a port of its own), summed over the workers;
* ``request_duration``: the workers' ``request_latency_seconds`` Prometheus histogram; each request
  is recorded at its bucket's upper bound (5, 10, 25, 50, 75, 100, 150, 250, 500, 750 ms, 1 s, ...; above
  30 s at 60 s), so its percentiles are upper bounds at the buckets' resolution;
* backlog: ``XINFO GROUPS`` ``lag`` + ``pending`` of the run's stream, in stream entries (batches).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ciotrack.errors import CiotrackError
from ciotrack.redact import redacted_url

__all__ = ["FleetProbe", "FleetStartError", "FleetTarget", "Outcomes"]

log = logging.getLogger("ciotrack.loadtest")

_LATENCY = "ciotrack_worker_request_latency_seconds_bucket"
_ABOVE_LAST_BUCKET_MS = 60_000.0
_METRICS_EVERY = 0.1  # seconds between two scrapes of the workers' /metrics (N HTTP requests + parsing)
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above ciotrack/


@dataclass(frozen=True)
class Outcomes:
    """Cumulative delivery counters: the tracker's own, or (fleet) the workers' and the receiver's."""

    delivered: int
    failed: int
    requests: Mapping[str, int]
    retried: int


class FleetProbe(Protocol):
    def delivered_ops(self) -> int: ...

    def outcomes(self) -> Outcomes: ...

    def stream_backlog(self) -> tuple[int, int]: ...

    def new_request_latencies(self) -> list[tuple[float, int]]: ...


class FleetStartError(CiotrackError, RuntimeError):
    """The fleet could not start: no redis-server, Redis unreachable, or a worker that did not come up."""


class FleetTarget:
    """Redis (given or throwaway), the run's consumer group and N worker subprocesses; ``stop()`` drains them."""

    def __init__(self, *, redis_url: str | None, workers: int, site_id: str, api_key: str, endpoint: str,
                 rate_limit: float, burst: float, receiver_stats: Callable[[], Mapping[str, Any]] | None) -> None:
        self.workers = workers
        self.site_id = site_id
        self._api_key = api_key
        self.endpoint = endpoint
        self.rate_limit = rate_limit
        self.burst = burst
        self.prefix = f"ciotrack-lt-{secrets.token_hex(4)}"
        self._receiver_stats = receiver_stats
        self._given_url = redis_url
        self.redis_url = redis_url or ""
        self._dir = Path(tempfile.mkdtemp(prefix="ciotrack-loadtest-fleet-"))
        self._local: Any = None  # LocalRedis when we started one
        self._client: Any = None
        self._keys: Any = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._ports: list[int] = []
        self._scraped: list[dict[str, float]] = []
        self._scraped_at = float("-inf")
        self._delivered_base = 0
        self._delivered_last = 0
        self._backlog = (0, 0)
        self._latency_seen: dict[float, float] = {}  # bucket upper bound (ms) -> requests recorded so far
        self.exit_codes: list[int | None] = []
        self.failed_logs: dict[int, str] = {}
        self.keys_left: list[str] = []
        self._stopped = False

    def __repr__(self) -> str:  # neither the API key nor a Redis password
        return f"FleetTarget(workers={self.workers}, redis={redacted_url(self.redis_url)!r}, prefix={self.prefix!r})"

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "redis_url": redacted_url(self.redis_url),
                "redis": "given (--redis-url)" if self._given_url else "throwaway local redis-server",
                "key_prefix": self.prefix, "stream": self._keys.work if self._keys is not None else None}

    # -- start ------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Redis, the group (created before the first XADD, at 0), the workers (each answering /readyz)."""
        from ciotrack.fleet import require_extra

        require_extra("redis", "prometheus_client")
        from ciotrack.fleet.producer import connect
        from ciotrack.fleet.streams import StreamKeys, ensure_group

        if not self._given_url:
            from ciotrack.fleet.local_redis import LocalRedis, RedisNotInstalledError

            redis_dir = self._dir / "redis"
            redis_dir.mkdir()
            self._local = LocalRedis(redis_dir)
            try:
                self._local.start()
            except RedisNotInstalledError as exc:
                raise FleetStartError(f"the fleet target needs a Redis: give --redis-url URL, or install "
                                      f"redis-server for a throwaway local one ({exc})") from None
            except CiotrackError as exc:
                raise FleetStartError(f"the throwaway redis-server did not start: {exc}") from None
            self.redis_url = self._local.url
        self._client = connect(self.redis_url, socket_timeout=5.0)
        self._keys = StreamKeys.for_site(self.site_id, self.prefix)
        try:
            self._client.ping()
            ensure_group(self._client, self._keys)
        except Exception as exc:
            raise FleetStartError(f"the fleet target cannot use Redis at {redacted_url(self.redis_url)} "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None
        from ciotrack.fleet.local_redis import free_port

        for n in range(self.workers):
            port = free_port()
            self._ports.append(port)
            self._procs.append(self._spawn(n, port))
        deadline = time.monotonic() + timeout
        for n, port in enumerate(self._ports):
            self._wait_ready(n, port, deadline)
        self._scraped = [{} for _ in self._ports]
        self._delivered_base = self._delivered_now(force=True)

    def _spawn(self, n: int, port: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # From the environment, not the command line (``ps`` shows that): the key, and a URL that may
        # carry a Redis password.
        env["CIOTRACK_API_KEY"] = self._api_key
        env["CIOTRACK_REDIS_URL"] = self.redis_url
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
        args = [sys.executable, "-m", "ciotrack", "worker", "--site-id", self.site_id, "--endpoint", self.endpoint,
                "--rate-limit", f"{self.rate_limit:g}", "--burst", f"{self.burst:g}", "--metrics-port", str(port),
                "--key-prefix", self.prefix, "--consumer", f"{self.prefix}-{n}"]
        with open(self._dir / f"worker-{n}.log", "wb") as log:
            return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def _wait_ready(self, n: int, port: int, deadline: float) -> None:
        proc = self._procs[n]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FleetStartError(f"worker {n} exited with status {proc.returncode}:\n{self.worker_log(n)}")
            try:
                with _OPENER.open(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise FleetStartError(f"worker {n} was not ready (/readyz) within the start timeout:\n{self.worker_log(n)}")

    def worker_log(self, n: int) -> str:
        path = self._dir / f"worker-{n}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    # -- the driver's FleetProbe ------------------------------------------------------------------

    def delivered_ops(self) -> int:
        """Operations the receiver acknowledged since ``start()``."""
        return self._delivered_now() - self._delivered_base

    def _delivered_now(self, force: bool = False) -> int:
        if self._receiver_stats is not None:
            try:
                stats = self._receiver_stats()
            except Exception:  # an emulator that stopped answering: nothing newer than the last poll
                return self._delivered_last
            self._delivered_last = int(stats.get("operations", 0)) - int(stats.get("duplicates", 0))
        else:
            self._delivered_last = int(self._metrics(force).get("ciotrack_worker_operations_delivered_total", 0.0))
        return self._delivered_last

    def outcomes(self) -> Outcomes:
        totals = self._metrics(force=True)
        prefix = "ciotrack_worker_requests_total|"
        requests = {key[len(prefix):]: int(value) for key, value in totals.items() if key.startswith(prefix)}
        failed = sum(v for k, v in totals.items() if k.startswith("ciotrack_worker_operations_failed_total"))
        return Outcomes(delivered=self.delivered_ops(), failed=int(failed), requests=requests,
                        retried=int(totals.get("ciotrack_worker_retries_total", 0.0)))

    def new_request_latencies(self) -> list[tuple[float, int]]:
        """``(ms, count)`` of the requests the workers made since the last call (at bucket upper bounds).
        A fresh scrape: after the drain, the last one must see the last requests (as ``outcomes()`` does)."""
        cumulative = sorted((_bound_ms(key[len(_LATENCY) + 1:]), value)
                            for key, value in self._metrics(force=True).items() if key.startswith(_LATENCY + "|"))
        out = []
        below = 0.0
        for bound, total in cumulative:
            in_bucket = total - below
            below = total
            new = int(in_bucket - self._latency_seen.get(bound, 0.0))
            if new > 0:
                out.append((bound, new))
                self._latency_seen[bound] = in_bucket
        return out

    def stream_backlog(self) -> tuple[int, int]:
        """``(lag, pending)`` of the run's consumer group, in entries. Entries are deleted once
        acknowledged, so when Redis cannot say the lag (null) it is the stream's length minus pending.
        While Redis does not answer, the last figures stand (the tracker retries and spools meanwhile)."""
        try:
            groups: Any = self._client.xinfo_groups(self._keys.work)
            for group in groups:
                if group.get("name") in (self._keys.group, self._keys.group.encode()):
                    pending = int(group.get("pending") or 0)
                    lag = group.get("lag")
                    if lag is None:
                        lag = max(0, int(self._client.xlen(self._keys.work)) - pending)
                    self._backlog = (int(lag), pending)
        except Exception as exc:  # a Redis outage must not end the run
            log.debug("stream backlog unavailable: %s", type(exc).__name__)
        return self._backlog

    def _metrics(self, force: bool = False) -> dict[str, float]:
        """The workers' counters, summed (``name|label`` for the labelled ones); a worker that does not
        answer keeps its last values (its counters only go up)."""
        now = time.monotonic()
        if force or now - self._scraped_at >= _METRICS_EVERY:
            self._scraped_at = now
            for n, port in enumerate(self._ports):
                try:
                    self._scraped[n] = _scrape(port)
                except OSError:
                    pass
        total: dict[str, float] = {}
        for values in self._scraped:
            for key, value in values.items():
                total[key] = total.get(key, 0.0) + value
        return total

    # -- stop -------------------------------------------------------------------------------------

    def stop(self, timeout: float = 40.0) -> list[int | None]:
        """SIGTERM the workers (they finish in-flight entries and exit 0), then stop a throwaway Redis, or
        remove this run's keys from a given one (:meth:`_remove_run_keys`). Returns the workers' exit
        codes (None: killed after ``timeout``); idempotent. The log of a worker that did not exit 0 is
        kept in ``failed_logs``."""
        if self._stopped:
            return self.exit_codes
        self._stopped = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for proc in self._procs:
            try:
                codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        self.exit_codes = codes
        self.failed_logs = {n: self.worker_log(n) for n, code in enumerate(codes) if code != 0}
        if self._client is not None:
            if self._given_url and self._keys is not None:
                self._remove_run_keys()
            self._client.close()
        if self._local is not None:
            self._local.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
        return codes

    def _remove_run_keys(self) -> None:
        """A given Redis keeps nothing of a clean run (its stream, group, tries and limiter keys all
        carry the run's random prefix); undelivered entries or dead letters are left for an operator,
        and ``keys_left`` names what stays."""
        try:
            if self._client.xlen(self._keys.work) == 0 and self._client.xlen(self._keys.dead) == 0:
                for key in list(self._client.scan_iter(match=f"{self.prefix}:*", count=500)):
                    self._client.delete(key)
            self.keys_left = sorted(k.decode() if isinstance(k, bytes) else str(k)
                                    for k in self._client.scan_iter(match=f"{self.prefix}:*", count=500))
        except Exception as exc:  # Redis gone at the end: nothing more to do about it
            log.warning("ciotrack loadtest: could not remove the run's keys (%s)", type(exc).__name__)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only: never a proxy


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as response:
        text = response.read().decode("utf-8")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            label: str | None
            if sample.name == _LATENCY:
                label = sample.labels["le"]
            elif family.type == "counter" and sample.name.endswith("_total"):  # not the _created timestamps
                label = sample.labels.get("status") or sample.labels.get("reason")
            else:
                continue
            key = f"{sample.name}|{label}" if label else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _bound_ms(le: str) -> float:
    return _ABOVE_LAST_BUCKET_MS if le == "+Inf" else float(le) * 1000.0
