"""A refused API key (401/403) pauses the worker that holds it and costs the entries nothing: no try is
counted, nothing is dead-lettered, ``/readyz`` says not ready, the cause is logged (never the key), and
delivery resumes once an answer accepts the key. Real Redis; the worker in this process (with short
pauses), the emulator in its own."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import pytest
import requests

from ciotrack.emulator import Emulator
from ciotrack.fleet.credentials import CredentialsPause
from ciotrack.fleet.metrics import serve
from ciotrack.fleet.worker import Worker, WorkerConfig
from redis_harness import RedisServer, free_port

from .fleet_entries import KEYS, write_entries
from .fleet_procs import API_KEY, SITE_ID, redis_client, stored_events, wait_until

ENTRIES, PER = 20, 5
WRONG_KEY = "a-rotated-key-7c1e"


def run_worker(redis_url: str, endpoint: str, api_key: str) -> tuple[Worker, threading.Thread, Any, int]:
    """A worker with --max-deliveries 1 (a counted try would dead-letter at once) and pauses of 0.2-0.5 s,
    its /readyz served on a free port. Returns the worker, its thread, the HTTP server and the port."""
    worker = Worker(WorkerConfig(redis_url, SITE_ID, api_key, endpoint=endpoint, rate_limit=0, concurrency=4,
                                 max_deliveries=1, block_ms=200))
    worker._credentials = CredentialsPause(SITE_ID, worker.probes, first=0.2, longest=0.5)
    port = free_port()
    server = serve(worker.metrics, worker.probes, port, host="127.0.0.1")
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    return worker, thread, server, port


def readyz(port: int) -> int:
    return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code


def refusals(emulator: Any, status: int) -> int:
    return int(emulator.stats()["by_status"].get(str(status), 0))


def test_a_wrong_key_dead_letters_nothing_counts_no_try_and_is_not_ready(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ciotrack.fleet")
    client = redis_client(redis_server.url)
    ids = write_entries(client, ENTRIES, per=PER)
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        worker, thread, server, port = run_worker(redis_server.url, em.url, WRONG_KEY)
        try:
            # Three refusals per entry, where one counted try would dead-letter it.
            wait_until(lambda: refusals(em, 401) >= 3 * ENTRIES or client.xlen(KEYS.dead) > 0, 60)
            assert client.xlen(KEYS.dead) == 0
            assert refusals(em, 401) >= 3 * ENTRIES
            assert readyz(port) == 503
        finally:
            worker.drain()
            thread.join(30)
            server.shutdown()
        assert refusals(em, 200) == 0
        answered_401 = refusals(em, 401)
    assert sorted(entry_id.decode() for entry_id, _ in client.xrange(KEYS.work)) == ids  # all still there
    assert all(int(n) <= 0 for n in client.hgetall(KEYS.tries).values())  # every try taken back
    lines = [r.getMessage() for r in caplog.records]
    refused = [line for line in lines if "refused this worker's credentials" in line]
    assert refused and all(SITE_ID in line and "401" in line for line in refused)
    assert len(refused) < answered_401  # once per pause, not once per answer
    assert not any(WRONG_KEY in line or API_KEY in line for line in lines)


@pytest.mark.parametrize("status", [401, 403])
def test_delivery_resumes_once_the_key_is_accepted_again(redis_server: RedisServer, status: int) -> None:
    client = redis_client(redis_server.url)
    write_entries(client, ENTRIES, per=PER)
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        em.set_faults(error_rate=1.0, error_statuses=[status])  # as while a rotated key propagates
        worker, thread, server, port = run_worker(redis_server.url, em.url, API_KEY)
        try:
            wait_until(lambda: refusals(em, status) >= 2 * ENTRIES or client.xlen(KEYS.dead) > 0, 60)
            assert client.xlen(KEYS.dead) == 0 and refusals(em, status) >= 2 * ENTRIES
            assert readyz(port) == 503
            em.clear_faults()
            assert wait_until(lambda: client.xlen(KEYS.work) == 0, 60)
            assert wait_until(lambda: readyz(port) == 200, 10)
        finally:
            worker.drain()
            thread.join(30)
            server.shutdown()
        counts = Counter(stored_events(em))
        assert set(counts) == {(e, s) for e in range(ENTRIES) for s in range(PER)}
    assert client.xlen(KEYS.dead) == 0 and client.hlen(KEYS.tries) == 0
