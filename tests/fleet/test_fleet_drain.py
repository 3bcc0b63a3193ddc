"""SIGTERM drain and the worker's HTTP endpoints (/metrics with histogram buckets, /healthz, /readyz)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import requests

from ciotrack.emulator import Emulator
from ciotrack.fleet.streams import StreamKeys, ensure_group
from redis_harness import RedisServer, free_port

from .fleet_procs import (
    API_KEY,
    SITE_ID,
    WorkerProcess,
    redis_client,
    spawn_producer,
    stored_events,
    wait_producer,
    wait_until,
)

KEYS = StreamKeys.for_site(SITE_ID)


def _get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_sigterm_releases_stuck_entries_within_the_deadline_and_a_peer_delivers_them(
        redis_server: RedisServer, tmp_path: Path) -> None:
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        em.set_faults(latency=20.0)  # every request hangs far past the drain deadline
        client = redis_client(redis_server.url)
        ensure_group(client, KEYS)
        port = free_port()
        first = WorkerProcess(redis_server.url, em.url, "--rate-limit", "0", "--drain-timeout", "3",
                              "--request-timeout", "30", "--visibility-timeout", "120", "--metrics-port", str(port),
                              log=tmp_path / "first.log")
        assert wait_until(lambda: _ready(port), 20)
        assert _get(port, "/healthz").status_code == 200
        # Probes reach a pod by its IPv6 address on an IPv6-only cluster: the server listens on both.
        assert requests.get(f"http://[::1]:{port}/healthz", timeout=5).status_code == 200
        assert wait_producer(spawn_producer(redis_server.url, 0, 100, 0.2)).startswith("flushed True 100")
        assert wait_until(lambda: client.xinfo_groups(KEYS.work)[0]["pending"] > 0, 10)
        assert wait_until(lambda: em.stats()["in_flight"] > 0, 10)  # requests are hanging at the emulator
        started = time.monotonic()
        assert first.terminate(timeout=30) == 0
        drained_in = time.monotonic() - started
        log = (tmp_path / "first.log").read_text()
        assert "draining: " in log and "drained in " in log  # an operator sees the drain begin and end
        em.clear_faults()
        # Released, not abandoned: a new worker takes them at once, not after the 120 s visibility timeout.
        second = WorkerProcess(redis_server.url, em.url, "--rate-limit", "0", "--visibility-timeout", "120",
                               log=tmp_path / "second.log")
        assert wait_until(lambda: client.xlen(KEYS.work) == 0, 30), (drained_in, client.xinfo_groups(KEYS.work))
        counts = Counter(stored_events(em))
        assert set(counts) == {(0, i) for i in range(100)}
        assert second.terminate() == 0
        # A release is not a try: nothing is left in the tries hash, nothing was dead-lettered.
        assert client.hlen(KEYS.tries) == 0 and client.xlen(KEYS.dead) == 0


def _ready(port: int) -> bool:
    try:
        return _get(port, "/readyz").status_code == 200
    except requests.ConnectionError:
        return False


def test_metrics_endpoint_serves_histograms_and_fleet_counters(redis_server: RedisServer, tmp_path: Path) -> None:
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        em.set_faults(latency=0.02)
        port = free_port()
        worker = WorkerProcess(redis_server.url, em.url, "--rate-limit", "50", "--metrics-port", str(port),
                               log=tmp_path / "w.log")
        assert wait_until(lambda: _ready(port), 20)
        assert wait_producer(spawn_producer(redis_server.url, 0, 200, 0.5)).startswith("flushed True 200")
        assert wait_until(lambda: len(stored_events(em)) >= 200, 30)

        def metrics() -> dict[str, float]:
            out = {}
            for line in _get(port, "/metrics").text.splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
            return out

        assert wait_until(lambda: metrics().get("ciotrack_worker_operations_delivered_total") == 200.0, 10)
        m = metrics()
        requests_200 = m['ciotrack_worker_requests_total{status="200"}']
        assert requests_200 >= 1 and m["ciotrack_worker_batches_delivered_total"] == requests_200
        assert m['ciotrack_worker_request_latency_seconds_bucket{le="+Inf"}'] == requests_200
        assert m['ciotrack_worker_request_latency_seconds_bucket{le="0.015625"}'] == 0  # 20 ms answers
        assert m['ciotrack_worker_delivery_latency_seconds_bucket{le="+Inf"}'] == requests_200
        assert "ciotrack_worker_stream_lag" in m and "ciotrack_worker_stream_pending" in m
        assert m["ciotrack_worker_dead_letters_total"] == 0
        assert _get(port, "/nope").status_code == 404
        assert worker.terminate() == 0


def test_a_drain_while_redis_hangs_ends_within_the_drain_timeout(redis_server: RedisServer) -> None:
    """SIGTERM while Redis hangs (SIGSTOP: connections open, no answer) and a coalesced load is in flight:
    the drain still ends, exit status 0, within ``--drain-timeout`` plus a margin a pod's grace period
    has; the entries it could not hand back stay pending (claimed after the visibility timeout)."""
    import os
    import signal
    import threading

    from ciotrack.fleet.worker import Worker, WorkerConfig

    from .fleet_entries import write_entries

    client = redis_client(redis_server.url)
    write_entries(client, 10, per=1)
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        worker = Worker(WorkerConfig(redis_server.url, SITE_ID, API_KEY, endpoint=em.url, rate_limit=0,
                                     concurrency=2, drain_timeout=3.0, request_timeout=30.0,
                                     visibility_timeout=120.0))
        status: list[int] = []
        thread = threading.Thread(target=lambda: status.append(worker.run()), daemon=True)
        thread.start()
        assert wait_until(lambda: client.xlen(KEYS.work) == 0, 20)  # it learnt the entries' size
        em.set_faults(latency=60.0)
        pipe = client.pipeline(transaction=True)  # all at once: the blocked XREADGROUP gets a full read
        write_entries(pipe, 200, per=1)
        pipe.execute()
        assert wait_until(lambda: len(worker._in_flight) >= 40, 20)
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # Redis hangs (a partition, a stalled node)
        try:
            worker.drain()
            thread.join(3.0 + 7.0)  # the drain timeout, and what is left of a 10 s grace margin
            drained = not thread.is_alive()
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert drained and status == [0]
        # Its requests still hang at the emulator: every entry is still there, pending or handed back.
        assert client.xlen(KEYS.work) == 200 and client.xlen(KEYS.dead) == 0
