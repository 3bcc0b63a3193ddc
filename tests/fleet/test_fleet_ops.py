"""What a platform team sees of a ``ciotrack worker`` process: its log. Real processes (the worker as
``python -m ciotrack worker``, the emulator in its own), a real ``redis-server``, real sockets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ciotrack.emulator import Emulator
from redis_harness import RedisServer, free_port

from .fleet_entries import KEYS, write_entries
from .fleet_procs import API_KEY, SITE_ID, WorkerProcess, redis_client, stored_events, wait_until

ENTRIES, PER = 3, 5


def refused_requests(metrics_port: int) -> float:
    """The worker's own count of requests that got no answer (``requests_total{status="error"}``)."""
    try:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    except requests.RequestException:
        return 0.0
    for line in text.splitlines():
        if line.startswith('ciotrack_worker_requests_total{status="error"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_worker_logs_that_customerio_is_unreachable(redis_server: RedisServer, tmp_path: Path) -> None:
    # An egress the cluster blocks, a wrong --endpoint, a DNS or TLS failure: the worker's only voice
    # about it is its log, since /readyz stays ready (Redis answers, the key was never refused).
    client = redis_client(redis_server.url)
    write_entries(client, ENTRIES, per=PER)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    metrics_port = free_port()
    log = tmp_path / "worker.log"
    # One delivery thread: its second request starts after the first one's answer was handled.
    worker = WorkerProcess(redis_server.url, endpoint, "--metrics-port", str(metrics_port), "--concurrency", "1",
                           "--rate-limit", "0", "--request-timeout", "2", "--visibility-timeout", "10", log=log)
    assert wait_until(lambda: refused_requests(metrics_port) >= 2, 60)
    assert worker.terminate() == 0
    text = log.read_text()
    assert any("connection refused" in line and endpoint in line for line in text.splitlines()), text
    assert API_KEY not in text


def test_the_worker_logs_that_delivery_recovered(redis_server: RedisServer, tmp_path: Path) -> None:
    # The other half of the outage story: the INFO line saying it is over (how long, how many attempts).
    client = redis_client(redis_server.url)
    write_entries(client, ENTRIES, per=PER)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    metrics_port = free_port()
    log = tmp_path / "worker.log"
    worker = WorkerProcess(redis_server.url, endpoint, "--metrics-port", str(metrics_port), "--concurrency", "1",
                           "--rate-limit", "0", "--request-timeout", "2", "--visibility-timeout", "10", log=log)
    assert wait_until(lambda: refused_requests(metrics_port) >= 2, 60)
    with Emulator.spawn(port=port, workspaces={SITE_ID: API_KEY}) as emulator:
        # An entry is acknowledged after the answer that delivered it was seen (and logged).
        assert wait_until(lambda: client.xlen(KEYS.work) == 0, 120)
        assert len(stored_events(emulator)) == ENTRIES * PER
    assert worker.terminate() == 0
    text = log.read_text()
    assert any("recovered" in line and endpoint in line for line in text.splitlines()), text
    assert API_KEY not in text


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--drain-timeout", "1.5", "drain_timeout must be >= 2 s, got 1.5"),
    ("--drain-timeout", "nan", "drain_timeout must be >= 2 s, got nan"),
    ("--request-timeout", "0", "request_timeout must be > 0 s, got 0"),
])
def test_the_worker_refuses_timeouts_it_cannot_keep(flag: str, value: str, says: str) -> None:
    # Refused before any connection (the Redis URL points nowhere): exit 2 and one line that says why.
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run([sys.executable, "-m", "ciotrack", "worker", "--redis-url", nowhere, "--site-id", SITE_ID,
                           flag, value], env={**os.environ, "CIOTRACK_API_KEY": API_KEY},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert API_KEY not in done.stderr
