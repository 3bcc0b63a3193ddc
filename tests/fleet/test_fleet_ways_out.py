"""Each way out of the work stream (dead letter, requeue, release) happens once, even when it is run
again: ``_redis_call`` and redis-py re-run a Redis step after a ConnectionError/TimeoutError, which may
come after Redis did run it (the reply lost to a reset or a failover). Real Redis; the worker's client is
wrapped to lose one reply after the server ran the command."""

from __future__ import annotations

from typing import Any

import redis

from ciotrack.fleet.streams import StoredBatch, WorkEntry, decode_entry
from ciotrack.fleet.worker import Worker, WorkerConfig
from redis_harness import RedisServer

from .fleet_entries import KEYS, write_entries
from .fleet_procs import API_KEY, SITE_ID, redis_client

_WRITES = ("EVALSHA", "EVAL")


class LosesOneReply:
    """The worker's client, except that the first transaction (MULTI/EXEC) or script it runs reaches Redis
    and runs there, and then its reply is lost, as redis-py reports it: ConnectionError."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _lose(self) -> None:
        if self.lost == 0:
            self.lost += 1
            raise redis.ConnectionError("Connection reset by peer (reply lost)")

    def evalsha(self, *args: Any) -> Any:
        result = self._real.evalsha(*args)
        self._lose()
        return result

    def eval(self, *args: Any) -> Any:
        result = self._real.eval(*args)
        self._lose()
        return result

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._real.pipeline(transaction=transaction)
        real_execute = pipe.execute

        def execute(*args: Any, **kwargs: Any) -> Any:
            result = real_execute(*args, **kwargs)
            if transaction:
                self._lose()
            return result

        pipe.execute = execute
        return pipe


def worker_with_a_read_entry(url: str, per: int = 4, tries: int = 1) -> tuple[Worker, WorkEntry, Any]:
    """A worker (consumer ``me``) holding one entry it read, with ``tries`` counted; its client loses one
    reply. Returns the worker, the entry and a plain client."""
    client = redis_client(url)
    write_entries(client, 1, per=per)
    [(_, [(entry_id, fields)])] = client.xreadgroup(KEYS.group, "me", {KEYS.work: ">"}, count=1)
    entry = decode_entry(entry_id, fields)
    client.hset(KEYS.tries, entry.entry_id, tries)
    worker = Worker(WorkerConfig(url, SITE_ID, API_KEY, consumer="me", rate_limit=0))
    worker.redis = LosesOneReply(worker.redis)
    return worker, entry, client


def test_a_requeue_whose_reply_was_lost_writes_the_rest_once(redis_server: RedisServer) -> None:
    worker, entry, client = worker_with_a_read_entry(redis_server.url, tries=2)
    rest = StoredBatch.from_ops(entry.batch.ops()[2:])  # a 413 split delivered the first half
    worker._requeue(entry, rest, tries=2, rejected=[entry.batch.ops()[0]], why="rejected: bad")
    assert worker.redis.lost == 1
    [(new_id, fields)] = client.xrange(KEYS.work)
    assert decode_entry(new_id, fields).batch.ops() == rest.ops()
    assert client.xlen(KEYS.dead) == 1  # the refused operation, once
    assert client.hgetall(KEYS.tries) == {new_id: b"2"}  # the tries went with the rest, once
    assert client.xpending(KEYS.work, KEYS.group)["pending"] == 0


def test_a_dead_letter_whose_reply_was_lost_is_written_once(redis_server: RedisServer) -> None:
    worker, entry, client = worker_with_a_read_entry(redis_server.url, tries=5)
    worker._dead_letter(entry, entry.batch, "400: bad", 5)
    assert worker.redis.lost == 1
    [(_, fields)] = client.xrange(KEYS.dead)  # one dead letter: a replay sends it once
    assert fields[b"source_id"] == entry.entry_id.encode() and fields[b"tries"] == b"5"
    assert client.xlen(KEYS.work) == 0 and client.hlen(KEYS.tries) == 0


def test_a_release_whose_reply_was_lost_takes_one_try_back(redis_server: RedisServer) -> None:
    worker, entry, client = worker_with_a_read_entry(redis_server.url, tries=3)
    worker._release(entry, "drain_timeout", uncount_try=True)
    assert worker.redis.lost == 1
    assert client.hget(KEYS.tries, entry.entry_id) == b"2"
    [pending] = client.xpending_range(KEYS.work, KEYS.group, "-", "+", 10)
    assert pending["consumer"] == b"me" and pending["time_since_delivered"] > 60_000  # claimable at once


def test_a_release_never_takes_an_entry_back_from_the_peer_that_claimed_it(redis_server: RedisServer) -> None:
    """A worker that stalled past the visibility timeout (its entry claimed by a peer) and then gives the
    entry up must not make it claimable again while the peer delivers it."""
    worker, entry, client = worker_with_a_read_entry(redis_server.url, tries=1)
    client.xclaim(KEYS.work, KEYS.group, "peer", 0, [entry.entry_id], justid=True)
    worker.redis = worker.redis._real
    worker._release(entry, "failed", uncount_try=True)
    [pending] = client.xpending_range(KEYS.work, KEYS.group, "-", "+", 10)
    assert pending["consumer"] == b"peer" and pending["time_since_delivered"] < 60_000
    assert client.hget(KEYS.tries, entry.entry_id) == b"1"
