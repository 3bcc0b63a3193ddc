"""Coalescing in ``ciotrack worker``: small fresh stream entries share requests, and each entry is still
settled on its own (acknowledged, split, dead-lettered, or sent alone later). Real Redis, real worker
processes, the emulator.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from ciotrack.fleet.streams import StoredBatch, StreamKeys, encode_entry, ensure_group
from redis_harness import RedisServer

from .fleet_procs import SITE_ID, WorkerProcess, event_op, redis_client, stored_events, wait_until
from .test_fleet_split import answered, worker_counters
from conftest import free_port

KEYS = StreamKeys.for_site(SITE_ID)
ENTRIES, PER_ENTRY = 12, 20


def write_entries(client: Any, bad: dict[int, int] | None = None) -> list[str]:
    """ENTRIES entries of PER_ENTRY events each, as producers write them; ``bad[entry] = seq`` makes that
    event invalid (an empty name: the emulator rejects it in a 207). Returns the entry ids."""
    ensure_group(client, KEYS)
    ids = []
    for entry in range(ENTRIES):
        ops = [event_op(entry, seq, "" if (bad or {}).get(entry) == seq else "fleet") for seq in range(PER_ENTRY)]
        body = b'{"batch":[' + b",".join(ops) + b"]}"
        ids.append(client.xadd(KEYS.work, encode_entry(body, "us", "test:1:x")).decode())
    return ids


def assert_settled(client: Any, dead_letters: int = 0, counters: dict[str, float] | None = None) -> None:
    """Nothing left in the stream or pending, no try count left over, ``dead_letters`` dead letters; with
    the worker's ``counters``, every entry acknowledged once."""
    assert client.xlen(KEYS.work) == 0 and client.xlen(KEYS.dead) == dead_letters
    if counters is not None:
        assert counters["ciotrack_worker_batches_delivered_total"] == ENTRIES
    assert client.hlen(KEYS.tries) == 0  # every try count went with its entry
    assert client.xinfo_groups(KEYS.work)[0]["pending"] == 0


def drain_with_a_worker(redis_url: str, emulator: Any, tmp_path: Path, *flags: str,
                        meanwhile: Callable[[], Any] | None = None) -> dict[str, float]:
    """One ``ciotrack worker`` (no rate limit) until the stream is empty; its counters then. It must
    exit 0 on SIGTERM. ``meanwhile`` runs once the worker started (e.g. to clear a fault)."""
    client = redis_client(redis_url)
    port = free_port()
    worker = WorkerProcess(redis_url, emulator.url, "--rate-limit", "0", "--metrics-port", str(port), *flags,
                           log=tmp_path / "w.log")
    try:
        if meanwhile is not None:
            meanwhile()
        assert wait_until(lambda: client.xlen(KEYS.work) == 0, 60)
        return worker_counters(port)
    finally:
        assert worker.terminate() == 0


def assert_every_event_once(emulator: Any, missing: AbstractSet[tuple[int, int]] = frozenset()) -> None:
    counts = Counter(stored_events(emulator))
    assert set(counts) == {(e, s) for e in range(ENTRIES) for s in range(PER_ENTRY)} - missing
    assert set(counts.values()) == {1}


def test_small_entries_share_requests_and_each_is_acknowledged_once(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    client = redis_client(redis_server.url)
    write_entries(client)
    counters = drain_with_a_worker(redis_server.url, spawned_emulator, tmp_path)
    assert_every_event_once(spawned_emulator)
    requests = answered(spawned_emulator)
    assert all(status == 200 for status, _, _ in requests)
    assert len(requests) < ENTRIES and sum(n for _, n, _ in requests) == ENTRIES * PER_ENTRY
    assert counters["ciotrack_worker_entries_coalesced_total"] >= 2
    assert_settled(client, counters=counters)


def test_a_rejection_in_a_shared_request_dead_letters_only_the_operation_of_its_entry(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    client = redis_client(redis_server.url)
    ids = write_entries(client, bad={3: 7, 9: 0})
    drain_with_a_worker(redis_server.url, spawned_emulator, tmp_path)
    assert_every_event_once(spawned_emulator, missing={(3, 7), (9, 0)})
    assert len(answered(spawned_emulator)) < ENTRIES  # the entries did share requests
    dead = {fields[b"source_id"].decode(): fields for _, fields in client.xrange(KEYS.dead)}
    assert set(dead) == {ids[3], ids[9]}  # under the id of the entry each came from, nothing else
    for entry, seq in ((3, 7), (9, 0)):
        fields = dead[ids[entry]]
        [op] = json.loads(fields[b"body"])["batch"]
        assert (op["attributes"]["p"], op["attributes"]["seq"]) == (entry, seq)
        assert fields[b"error"].startswith(b"rejected: ")
    assert_settled(client, dead_letters=2)


def test_a_413_on_a_shared_request_splits_across_entries_and_each_is_acknowledged_once(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    client = redis_client(redis_server.url)
    write_entries(client)
    entry_bytes = len(client.xrange(KEYS.work, count=1)[0][1][b"body"])
    # Every entry fits alone, three of them do not: the shared body is split until pieces fit, and the
    # pieces cut through entries.
    spawned_emulator.set_faults(max_body_bytes=int(entry_bytes * 2.5))
    counters = drain_with_a_worker(redis_server.url, spawned_emulator, tmp_path)
    assert_every_event_once(spawned_emulator)
    requests = answered(spawned_emulator)
    statuses = Counter(status for status, _, _ in requests)
    assert statuses[413] >= 1 and set(statuses) == {200, 413}
    assert max(n for status, n, _ in requests if status == 200) > PER_ENTRY  # pieces spanning entries
    assert counters["ciotrack_worker_batch_splits_total"] >= 1
    assert_settled(client, counters=counters)


def test_a_shared_request_split_and_failed_in_part_requeues_an_entrys_rest_and_dead_letters_its_refusals(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    """Two entries share a request, which a 413 splits in halves of 15 operations: the first half holds all
    of the first entry and 5 operations of the second, one of them refused in a 207; the second half, the
    second entry's other 15, is refused whole (a 400: one is not JSON). The first entry is acknowledged;
    the second's refused operation is dead-lettered under its id, with its rest put back as a new entry,
    which is dead-lettered whole at ``--max-deliveries 2``."""
    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    first = [event_op(0, seq) for seq in range(10)]
    second = [event_op(1, seq, "" if seq == 2 else "fleet") for seq in range(20)]
    second[-1] = second[-1][:-1]  # its closing brace cut: the half that carries it is not JSON
    ids = []
    for ops in (first, second):
        batch = StoredBatch.from_ops(ops)
        ids.append(client.xadd(KEYS.work, encode_entry(batch.body, "us", "test:1:x", batch.offsets)).decode())
    shared = len(StoredBatch.from_ops(first + second).body)
    spawned_emulator.set_faults(max_body_bytes=shared * 2 // 3)
    counters = drain_with_a_worker(redis_server.url, spawned_emulator, tmp_path, "--max-deliveries", "2")
    assert counters["ciotrack_worker_entries_coalesced_total"] >= 2
    assert sorted(stored_events(spawned_emulator)) == sorted([(0, seq) for seq in range(10)]
                                                             + [(1, seq) for seq in (0, 1, 3, 4)])
    refused, rest = (fields for _, fields in client.xrange(KEYS.dead))
    assert refused[b"source_id"].decode() == ids[1] and refused[b"error"].startswith(b"rejected: ")
    [op] = json.loads(refused[b"body"])["batch"]
    assert (op["attributes"]["p"], op["attributes"]["seq"]) == (1, 2)
    assert rest[b"source_id"].decode() not in ids and rest[b"error"].startswith(b"400")
    assert int(rest[b"count"]) == 15 and rest[b"body"].endswith(second[-1] + b"]}")
    assert counters["ciotrack_worker_dead_letters_total"] == 2
    assert_settled(client, dead_letters=2)


def test_after_a_final_answer_to_a_shared_request_each_entry_goes_alone(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    client = redis_client(redis_server.url)
    write_entries(client)
    # Every request is refused for good (400) for a while: the shared request first, then the entries,
    # released without a try counted against them, are claimed and sent one by one (the high
    # max-deliveries keeps them out of the dead-letter stream meanwhile).
    spawned_emulator.set_faults(error_rate=1.0, error_statuses=[400])

    def clear_after_a_few_refusals() -> None:
        assert wait_until(lambda: len(spawned_emulator.requests()) >= 3, 30)
        spawned_emulator.clear_faults()

    counters = drain_with_a_worker(redis_server.url, spawned_emulator, tmp_path, "--max-deliveries", "1000",
                                   meanwhile=clear_after_a_few_refusals)
    assert_every_event_once(spawned_emulator)
    requests = answered(spawned_emulator)
    assert requests[0][0] == 400
    delivered = [n for status, n, _ in requests if status == 200]
    assert delivered == [PER_ENTRY] * ENTRIES  # after the shared request failed, never coalesced again
    assert counters["ciotrack_worker_entries_coalesced_total"] == ENTRIES  # the one shared request
    assert_settled(client)
