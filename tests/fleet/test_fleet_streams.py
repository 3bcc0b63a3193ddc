"""Stream schema and the producer destination against a real redis-server."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from ciotrack.destinations.base import Outcome
from ciotrack.fleet.producer import RedisStreamDestination
from ciotrack.fleet.streams import (
    StoredBatch,
    StreamKeys,
    decode_entry,
    encode_entry,
    ensure_group,
    op_offsets,
    workspace_tag,
)
from redis_harness import RedisServer

from .fleet_procs import redis_client


def _body(ops: list[Any]) -> bytes:
    return json.dumps({"batch": ops}, ensure_ascii=False).encode()


def test_op_offsets_find_every_op_even_with_unicode_and_nesting() -> None:
    ops = [{"type": "person", "identifiers": {"id": "a"}, "attributes": {"n": "é ü ☃", "x": [1, {"y": "]"}]}},
           {"type": "person", "action": "event", "name": "c,d", "id": "01J0000000000000000000000A"},
           {"k": "\"quoted\" ] , ["}]
    body = _body(ops)
    spans = op_offsets(body)
    assert [json.loads(body[a:b]) for a, b in spans] == ops
    spaced = b'{ "batch" : [ {"a":1} ,\n {"b":2} ] }'
    assert [json.loads(spaced[a:b]) for a, b in op_offsets(spaced)] == [{"a": 1}, {"b": 2}]
    assert op_offsets(b'{"batch":[]}') == ()
    with pytest.raises(ValueError):
        op_offsets(b'{"batch":[{"a":1} {"b":2}]}')


def test_stored_batch_splits_into_valid_bodies() -> None:
    ops = [{"i": i, "s": "ä" * i} for i in range(5)]
    body = _body(ops)
    batch = StoredBatch(body, op_offsets(body))
    assert batch.count == 5
    first, second = batch.split()
    assert json.loads(first.body)["batch"] + json.loads(second.body)["batch"] == ops
    assert [json.loads(op) for op in first.ops() + second.ops()] == ops
    with pytest.raises(ValueError):
        StoredBatch.from_ops([b"{}"]).split()


def test_entry_roundtrip_and_version_check() -> None:
    body = _body([{"a": 1}, {"b": "ü"}])
    fields = encode_entry(body, "eu", "host:1:x")
    entry = decode_entry(b"1-0", fields)
    assert entry.region == "eu" and entry.batch.body == body and entry.batch.count == 2
    assert [json.loads(op) for op in entry.batch.ops()] == [{"a": 1}, {"b": "ü"}]
    with pytest.raises(ValueError):
        decode_entry(b"1-0", {**fields, "v": b"9"})
    with pytest.raises(ValueError):
        decode_entry(b"1-0", {**fields, "offsets": b"\xff\xff\xff\xff" * 4})


def test_key_names_never_carry_odd_site_ids_verbatim() -> None:
    assert StreamKeys.for_site("site-1").work == "ciotrack:{site-1}:work"
    odd = StreamKeys.for_site("a b:{c}")
    assert "a b" not in odd.work and odd.work.startswith("ciotrack:{h") and workspace_tag("a b:{c}") in odd.dead


def test_group_creation_is_idempotent_and_starts_at_zero(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    keys = StreamKeys.for_site("site-1")
    assert ensure_group(client, keys) is True
    assert ensure_group(client, keys) is False
    groups = client.xinfo_groups(keys.work)
    assert groups[0]["name"] == keys.group.encode() and groups[0]["last-delivered-id"] == b"0-0"


def test_producer_writes_durable_entries_concurrently_and_pipelines(redis_server: RedisServer) -> None:
    destination = RedisStreamDestination(redis_server.url, "site-1", region="us")
    bodies = [_body([{"n": i}, {"m": i}]) for i in range(200)]
    outcomes: list[Outcome] = []

    def send(chunk: list[bytes]) -> None:
        outcomes.extend(destination.send(b) for b in chunk)

    threads = [threading.Thread(target=send, args=(bodies[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o.kind == "delivered" for o in outcomes) and len(outcomes) == 200
    client = redis_client(redis_server.url)
    entries = client.xrange(destination.keys.work)
    assert sorted(decode_entry(i, f).batch.body for i, f in entries) == sorted(bodies)
    assert destination.probe() is True
    # A body that is not a batch is refused for good, not retried forever.
    assert destination.send(b"not json").kind == "final"
    destination.close()


def test_producer_retries_while_redis_is_down_and_recovers_after_restart(redis_server: RedisServer) -> None:
    destination = RedisStreamDestination(redis_server.url, "site-1", timeout=1.0)
    assert destination.send(_body([{"before": 1}])).kind == "delivered"
    redis_server.kill()
    outcome = destination.send(_body([{"during": 1}]))
    assert outcome.kind == "retry" and outcome.status is None and outcome.reason.startswith("redis_")
    assert destination.probe() is False
    redis_server.start()
    assert destination.probe() is True
    assert destination.send(_body([{"after": 1}])).kind == "delivered"
    client = redis_client(redis_server.url)
    bodies = [decode_entry(i, f).batch.body for i, f in client.xrange(destination.keys.work)]
    # The entry acknowledged before the SIGKILL survived it (AOF replay).
    assert bodies == [_body([{"before": 1}]), _body([{"after": 1}])]


def test_producer_recreates_a_deleted_stream_with_its_group(redis_server: RedisServer) -> None:
    destination = RedisStreamDestination(redis_server.url, "site-1")
    assert destination.send(_body([{"a": 1}])).kind == "delivered"
    client = redis_client(redis_server.url)
    client.delete(destination.keys.work)
    outcome = destination.send(_body([{"b": 1}]))
    assert outcome.kind == "retry" and outcome.reason == "redis_stream_missing"
    assert destination.send(_body([{"b": 1}])).kind == "delivered"
    assert client.xinfo_groups(destination.keys.work)[0]["name"] == b"ciotrack-workers"
    with pytest.raises(redis.ResponseError):
        client.xadd(destination.keys.work, {"x": "y"}, nomkstream=True) and client.execute_command("NOSUCHCMD")
