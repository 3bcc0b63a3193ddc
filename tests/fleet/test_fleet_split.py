"""The 413 split path through ``ciotrack worker``: real Redis, real worker processes, the emulator
answering 413 above ``max_body_bytes``.

A stream entry is acknowledged only once every piece of its split batch is delivered; a worker that
dies between the halves leaves the entry pending, a peer claims it and sends the whole batch again
(the first half a second time), and the event ids make the result exactly once.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ciotrack.fleet.streams import StoredBatch, StreamKeys, encode_entry, ensure_group
from redis_harness import RedisServer

from .fleet_procs import SITE_ID, WorkerProcess, event_op, redis_client, stored_events, wait_until
from conftest import free_port

KEYS = StreamKeys.for_site(SITE_ID)
EVENTS = 40


def write_one_entry(redis_url: str, producer: int) -> tuple[Any, int]:
    """A producer (``Tracker(redis_url=...)``) writes EVENTS events as one batch: one stream entry.
    Returns a client and the entry's body size."""
    from ciotrack import Tracker

    client = redis_client(redis_url)
    ensure_group(client, KEYS)
    tracker = Tracker(SITE_ID, redis_url=redis_url, flush_interval=60, handle_sigterm=False)
    for i in range(EVENTS):
        tracker.track(f"c{producer}-{i % 4}", "fleet", {"p": producer, "seq": i, "pad": "x" * 40})
    assert tracker.flush(timeout=20)
    tracker.close(timeout=10)
    [(_entry_id, fields)] = client.xrange(KEYS.work)
    assert int(fields[b"count"]) == EVENTS
    return client, len(fields[b"body"])


def worker_counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def answered(emulator: Any) -> list[tuple[int, int, list[str]]]:
    """(status, operations, event ids) of every Track API request, oldest first (413s: no body read)."""
    out = []
    for request in emulator.requests():
        ops = json.loads(request["body"])["batch"] if request["status"] == 200 else []
        out.append((request["status"], len(ops), [op["id"] for op in ops]))
    return out


def assert_every_event_once_and_the_stream_empty(emulator: Any, client: Any) -> None:
    counts = Counter(stored_events(emulator))
    assert set(counts) == {(0, i) for i in range(EVENTS)} and set(counts.values()) == {1}
    assert client.xlen(KEYS.work) == 0 and client.xlen(KEYS.dead) == 0
    assert client.hlen(KEYS.tries) == 0  # the try count went with the acknowledgement
    assert client.xinfo_groups(KEYS.work)[0]["pending"] == 0


def test_a_413_splits_until_the_pieces_fit_and_the_entry_is_acked_once(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    client, body_bytes = write_one_entry(redis_server.url, 0)
    # Halves are still too large, quarters fit: two levels of splitting.
    spawned_emulator.set_faults(max_body_bytes=body_bytes // 3)
    port = free_port()
    worker = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", "--metrics-port", str(port),
                           log=tmp_path / "w.log")
    try:
        assert wait_until(lambda: len(stored_events(spawned_emulator)) >= EVENTS and client.xlen(KEYS.work) == 0, 30)
        assert_every_event_once_and_the_stream_empty(spawned_emulator, client)
        requests = answered(spawned_emulator)
        assert sorted(status for status, _, _ in requests) == [200] * 4 + [413] * 3
        delivered_ids = [i for status, _, ids in requests if status == 200 for i in ids]
        assert len(delivered_ids) == len(set(delivered_ids)) == EVENTS  # each op sent once, none dropped
        assert all(0 < n <= EVENTS // 4 + 1 for status, n, _ in requests if status == 200)
        counters = worker_counters(port)
        assert counters["ciotrack_worker_batch_splits_total"] == 3
        assert counters["ciotrack_worker_batches_delivered_total"] == 1  # one entry, one XACK
        assert counters["ciotrack_worker_operations_delivered_total"] == EVENTS
        assert counters["ciotrack_worker_dead_letters_total"] == 0
    finally:
        assert worker.terminate() == 0


def test_a_worker_killed_between_the_halves_leaves_the_entry_pending_and_a_peer_delivers_it_once(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    client, body_bytes = write_one_entry(redis_server.url, 0)
    spawned_emulator.set_faults(max_body_bytes=body_bytes * 2 // 3)  # the whole is too large, halves fit
    # One request every 5 s (the 413, then the first half, then the second half): the worker is killed
    # in the gap after the first half was stored.
    first = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0.2", "--burst", "1",
                          "--consumer", "first", log=tmp_path / "first.log")
    assert wait_until(lambda: len(stored_events(spawned_emulator)) >= EVENTS // 2, 30)
    first.kill()
    assert [(status, n) for status, n, _ in answered(spawned_emulator)] == [(413, 0), (200, EVENTS // 2)]
    # Half delivered is not delivered: the entry is still in the stream, pending on the dead consumer.
    assert client.xlen(KEYS.work) == 1
    [pending] = client.xpending_range(KEYS.work, KEYS.group, "-", "+", 10)
    assert pending["consumer"] == b"first" and pending["times_delivered"] == 1

    port = free_port()
    peer = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", "--consumer", "peer",
                         "--visibility-timeout", "8", "--request-timeout", "2", "--metrics-port", str(port),
                         log=tmp_path / "peer.log")
    try:
        assert wait_until(lambda: client.xlen(KEYS.work) == 0 and len(stored_events(spawned_emulator)) >= EVENTS,
                          60)
        assert_every_event_once_and_the_stream_empty(spawned_emulator, client)
        requests = answered(spawned_emulator)
        assert [(status, n) for status, n, _ in requests] == [(413, 0), (200, EVENTS // 2), (413, 0),
                                                             (200, EVENTS // 2), (200, EVENTS // 2)]
        # The first half went twice with the same ids; the emulator (like Customer.io) kept one copy.
        assert requests[1][2] == requests[3][2] and not set(requests[1][2]) & set(requests[4][2])
        assert spawned_emulator.stats()["duplicates"] == EVENTS // 2
        counters = worker_counters(port)
        assert counters["ciotrack_worker_claimed_total"] == 1
        assert counters["ciotrack_worker_batches_delivered_total"] == 1
        assert counters["ciotrack_worker_batch_splits_total"] == 1
    finally:
        assert peer.terminate() == 0


def test_a_split_that_fails_in_part_requeues_the_rest_and_dead_letters_what_customerio_refused(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    """The halves of a 413 split: the first is delivered with one operation refused in a 207, the second is
    refused whole (a 400: one of its operations is not JSON). The refused operation is dead-lettered at once,
    under the entry's id, in the same transaction that puts the second half back as a new entry; that one
    is dead-lettered whole at ``--max-deliveries 2``. Nothing is lost, nothing is left."""
    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    ops = [event_op(0, seq, "" if seq == 3 else "fleet") for seq in range(EVENTS)]
    ops[-1] = ops[-1][:-1]  # its closing brace cut: the half that carries it is not JSON
    batch = StoredBatch.from_ops(ops)  # with the offsets a producer records (the body is not JSON)
    entry_id = client.xadd(KEYS.work, encode_entry(batch.body, "us", "test:1:x", batch.offsets)).decode()
    spawned_emulator.set_faults(max_body_bytes=len(batch.body) * 2 // 3)  # the whole is too large, halves fit
    port = free_port()
    worker = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", "--max-deliveries", "2",
                           "--metrics-port", str(port), log=tmp_path / "w.log")
    try:
        assert wait_until(lambda: client.xlen(KEYS.work) == 0 and client.xlen(KEYS.dead) == 2, 60)
        assert sorted(stored_events(spawned_emulator)) == [(0, seq) for seq in range(EVENTS // 2) if seq != 3]
        dead = [fields for _, fields in client.xrange(KEYS.dead)]
        refused, failed_half = dead  # the refused operation first: it went with the requeue
        assert refused[b"source_id"].decode() == entry_id and refused[b"error"].startswith(b"rejected: ")
        [op] = json.loads(refused[b"body"])["batch"]
        assert (op["attributes"]["p"], op["attributes"]["seq"]) == (0, 3)
        # The second half, kept byte for byte (one of its operations is not JSON), from the requeued entry.
        assert failed_half[b"source_id"].decode() != entry_id and failed_half[b"error"].startswith(b"400")
        assert int(failed_half[b"count"]) == EVENTS // 2 and failed_half[b"body"].endswith(ops[-1] + b"]}")
        assert client.hlen(KEYS.tries) == 0 and client.xinfo_groups(KEYS.work)[0]["pending"] == 0
        counters = worker_counters(port)
        assert counters["ciotrack_worker_dead_letters_total"] == 2
        assert counters["ciotrack_worker_operations_delivered_total"] == EVENTS // 2 - 1
    finally:
        assert worker.terminate() == 0
