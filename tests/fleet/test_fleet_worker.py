"""``ciotrack worker`` over real processes: Redis, the emulator, producers using Tracker(redis_url=...)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ciotrack.emulator import Emulator
from ciotrack.fleet.streams import StreamKeys
from redis_harness import RedisServer

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


def test_producers_and_workers_deliver_every_event_once(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    workers = [WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0",
                             log=tmp_path / f"w{i}.log") for i in range(2)]
    producers = [spawn_producer(redis_server.url, p, 300, 1.0) for p in range(2)]
    outputs = [wait_producer(p) for p in producers]
    assert all(o.startswith("flushed True 300 redis") for o in outputs), outputs
    assert wait_until(lambda: len(stored_events(spawned_emulator)) >= 600, 30)
    counts = Counter(stored_events(spawned_emulator))
    assert set(counts) == {(p, i) for p in range(2) for i in range(300)} and set(counts.values()) == {1}
    client = redis_client(redis_server.url)
    assert wait_until(lambda: client.xlen(KEYS.work) == 0, 10)  # acknowledged and deleted
    assert [w.terminate() for w in workers] == [0, 0]
    assert client.xinfo_groups(KEYS.work)[0]["pending"] == 0


def _assert_all_once(emulator, producers: int, per_producer: int) -> Counter[tuple[int, int]]:  # type: ignore[no-untyped-def]
    counts = Counter(stored_events(emulator))
    expected = {(p, i) for p in range(producers) for i in range(per_producer)}
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected and set(counts.values()) == {1}
    return counts


def _all_values(client) -> bytes:  # type: ignore[no-untyped-def]
    """Every key name and every value in Redis, concatenated."""
    out = bytearray()
    for key in client.scan_iter(count=1000):
        out += key
        kind = client.type(key)
        if kind == b"stream":
            for entry_id, fields in client.xrange(key):
                out += entry_id + b"".join(k + v for k, v in fields.items())
            for group in client.xinfo_groups(key):
                out += group["name"]
        elif kind == b"hash":
            out += b"".join(k + v for k, v in client.hgetall(key).items())
        elif kind == b"string":
            out += client.get(key) or b""
        else:
            raise AssertionError(f"unexpected key type {kind!r} for {key!r}")
    return bytes(out)


def test_fleet_at_the_workspace_limit_four_producers_three_workers(redis_server: RedisServer, tmp_path: Path) -> None:
    # The emulator enforces 100 req/s (burst 10) and answers after 50 ms; the workers run with their
    # default pacing (the shared 97 req/s, burst 2), which must draw at most one 429.
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}, rate_limit=100, burst=10) as em:
        em.set_faults(latency=0.05)
        logs = [tmp_path / f"w{i}.log" for i in range(3)]
        workers = [WorkerProcess(redis_server.url, em.url, log=logs[i]) for i in range(3)]
        producers = [spawn_producer(redis_server.url, p, 1500, 3.0) for p in range(4)]
        outputs = [wait_producer(p) for p in producers]
        assert all(o.startswith("flushed True 1500 redis") for o in outputs), outputs
        assert wait_until(lambda: len(stored_events(em)) >= 6000, 60)
        _assert_all_once(em, 4, 1500)
        stats = em.stats()
        assert int(stats["by_status"].get("429", 0)) <= 1, stats["by_status"]
        assert [w.terminate() for w in workers] == [0, 0, 0]
        client = redis_client(redis_server.url)
        assert client.xlen(KEYS.work) == 0 and client.xlen(KEYS.dead) == 0
        # The API key is nowhere in Redis (keys, fields, values) nor in the workers' logs.
        assert API_KEY.encode() not in _all_values(client)
        assert all(API_KEY.encode() not in log.read_bytes() for log in logs)


def test_poison_entry_is_dead_lettered_after_max_tries_and_blocks_nothing(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    from ciotrack.fleet.streams import encode_entry, ensure_group

    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    poison = b'{"batch":[{"type":"person"}x]}'  # not JSON: the Track API answers 400 for the whole batch
    # Its one op is the bytes `{"type":"person"}x`, not JSON either: coalesced with the producer's entries it
    # spoils their request too (400), and each entry is then sent alone, so the poison always ends after its
    # own 3 tries. (An op of valid JSON would be refused in a 207 when coalesced: dead-lettered after one try.)
    poison_id = client.xadd(KEYS.work, encode_entry(poison, "us", "test", offsets=((10, 28),)))
    producer = spawn_producer(redis_server.url, 0, 400, 0.5)
    worker = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", "--max-deliveries", "3",
                           log=tmp_path / "w.log")
    assert wait_producer(producer).startswith("flushed True 400")
    assert wait_until(lambda: len(stored_events(spawned_emulator)) >= 400 and client.xlen(KEYS.dead) == 1, 30)
    _assert_all_once(spawned_emulator, 1, 400)
    [(_dead_id, fields)] = client.xrange(KEYS.dead)
    assert fields[b"source_id"] == poison_id and fields[b"tries"] == b"3" and fields[b"body"] == poison
    assert fields[b"error"].startswith(b"400")
    assert worker.terminate() == 0
    assert client.xlen(KEYS.work) == 0 and client.hlen(KEYS.tries) == 0
    # Each try reached the emulator: three 400s, and one more when the poison was read together with
    # the producer's first entries and spoiled their coalesced request (see the next test).
    assert int(spawned_emulator.stats()["by_status"].get("400", 0)) in (3, 4)


def test_a_poison_entry_read_together_with_good_ones_still_ends_after_its_own_tries(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    """Queued before the worker starts, the poison entry and two good ones are read in one turn and
    coalesced into one request: the poison spoils it (400), each entry is then sent alone, the good ones
    are delivered and the poison is dead-lettered after its own 3 tries, whole."""
    from ciotrack.fleet.streams import encode_entry, ensure_group

    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)

    def good(seq: int) -> bytes:
        return (b'{"batch":[{"type":"person","identifiers":{"id":"p0"},"action":"event","name":"e",'
                b'"id":"01ARZ3NDEKTSV4RRFFQ69G5F%02d","timestamp":1700000000,"attributes":{"p":0,"seq":%d}}]}'
                % (seq, seq))

    poison = b'{"batch":[{"type":"person"}x]}'
    client.xadd(KEYS.work, encode_entry(good(0), "us", "test"))
    poison_id = client.xadd(KEYS.work, encode_entry(poison, "us", "test", offsets=((10, 28),)))
    client.xadd(KEYS.work, encode_entry(good(1), "us", "test"))
    worker = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", "--max-deliveries", "3",
                           log=tmp_path / "w.log")
    assert wait_until(lambda: client.xlen(KEYS.dead) == 1 and len(stored_events(spawned_emulator)) == 2, 30)
    [(_dead_id, fields)] = client.xrange(KEYS.dead)
    assert (fields[b"source_id"], fields[b"tries"], fields[b"body"]) == (poison_id, b"3", poison)
    assert sorted(stored_events(spawned_emulator)) == [(0, 0), (0, 1)]
    assert worker.terminate() == 0
    assert client.xlen(KEYS.work) == 0 and client.hlen(KEYS.tries) == 0
    # The coalesced request's 400, then each of the poison's own three tries, then nothing more for it.
    assert int(spawned_emulator.stats()["by_status"].get("400", 0)) == 4


def test_rejected_operations_of_a_207_are_dead_lettered_and_the_rest_delivered(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    import json

    from ciotrack.fleet.streams import encode_entry, ensure_group

    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    good = {"type": "person", "action": "event", "identifiers": {"id": "u1"}, "name": "ok",
            "attributes": {"p": 7, "seq": 1}}
    bad = {"type": "person", "action": "event", "identifiers": {"cio_id": "nobody"}, "name": "lost",
           "attributes": {"p": 7, "seq": 2}}
    body = json.dumps({"batch": [good, bad]}).encode()
    client.xadd(KEYS.work, encode_entry(body, "us", "test"))
    worker = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", log=tmp_path / "w.log")
    assert wait_until(lambda: client.xlen(KEYS.dead) == 1 and client.xlen(KEYS.work) == 0, 30)
    assert stored_events(spawned_emulator) == [(7, 1)]
    [(_, fields)] = client.xrange(KEYS.dead)
    assert fields[b"count"] == b"1" and json.loads(fields[b"body"])["batch"] == [bad]
    assert fields[b"error"].startswith(b"rejected: not_found")
    assert worker.terminate() == 0


def test_a_restarted_consumer_delivers_its_own_pending_entries_once(
        redis_server: RedisServer, spawned_emulator: Any, tmp_path: Path) -> None:
    import json

    from ciotrack.fleet.streams import encode_entry, ensure_group

    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    for i in range(30):  # events without ids: a second delivery would be stored twice
        op = {"type": "person", "action": "event", "identifiers": {"id": "u"}, "name": "e",
              "attributes": {"p": 0, "seq": i}}
        client.xadd(KEYS.work, encode_entry(json.dumps({"batch": [op]}).encode(), "us", "test"))
    # A previous life of consumer "pod-0" read them all and died before acknowledging any.
    assert len(client.xreadgroup(KEYS.group, "pod-0", {KEYS.work: ">"}, count=100)[0][1]) == 30
    # Back with the same name, two threads, and a visibility timeout no claim will reach in this test:
    # only its own-pending pass (page by page) can deliver them.
    worker = WorkerProcess(redis_server.url, spawned_emulator.url, "--rate-limit", "0", "--consumer", "pod-0",
                           "--concurrency", "2", "--visibility-timeout", "600", log=tmp_path / "w.log")
    assert wait_until(lambda: client.xlen(KEYS.work) == 0, 30)
    assert sorted(stored_events(spawned_emulator)) == [(0, i) for i in range(30)]
    assert worker.terminate() == 0
