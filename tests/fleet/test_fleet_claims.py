"""Which entries a worker takes, and that it hands each to one delivery thread at a time: its own pending
entries, a dead peer's idle ones (claims), wherever they sit in the group's pending list. Real Redis;
the worker runs in this process, the emulator in its own."""

from __future__ import annotations

import pytest

from ciotrack.emulator import Emulator
from ciotrack.fleet.worker import Worker, WorkerConfig
from redis_harness import RedisServer

from .fleet_entries import KEYS, leave_idle, posts_per_event, start_worker, write_entries
from .fleet_procs import API_KEY, SITE_ID, redis_client, wait_until


@pytest.mark.parametrize("stale_owner", ["dead-pod", "restarted-pod"])
def test_entries_idle_at_startup_are_sent_once(redis_server: RedisServer, stale_owner: str) -> None:
    """A worker starting while entries are idle past the visibility timeout: a dead peer's (claimed), or
    its own from a previous life under the same consumer name (re-read as own pending, and idle enough
    to be claimed too). Each entry goes to one delivery thread once: no event is POSTed twice."""
    client = redis_client(redis_server.url)
    ids = write_entries(client, 3)
    leave_idle(client, stale_owner, ids)
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        em.set_faults(latency=0.5)  # deliveries overlap: a second hand-out would be a concurrent send
        worker, thread = start_worker(WorkerConfig(redis_server.url, SITE_ID, API_KEY, endpoint=em.url,
                                                   consumer="restarted-pod", rate_limit=0, concurrency=8,
                                                   coalesce=False))
        try:
            assert wait_until(lambda: client.xlen(KEYS.work) == 0, 30)
        finally:
            worker.drain()
            thread.join(30)
        posts = posts_per_event(em)
        assert len(posts) == 15
        assert set(posts.values()) == {1}, sorted(posts.values())
    assert client.hlen(KEYS.tries) == 0 and client.xlen(KEYS.dead) == 0


def test_an_entry_held_by_this_worker_is_not_handed_out_again(redis_server: RedisServer) -> None:
    """Whatever read returns an entry a second time while it is queued or in flight here, it is not
    queued again; once its delivery ended it may be."""
    client = redis_client(redis_server.url)
    write_entries(client, 2, per=1)
    worker = Worker(WorkerConfig(redis_server.url, SITE_ID, API_KEY, consumer="me", rate_limit=0, concurrency=4))
    [(_, fresh)] = client.xreadgroup(KEYS.group, "me", {KEYS.work: ">"}, count=2)
    [(_, again)] = client.xreadgroup(KEYS.group, "me", {KEYS.work: "0"}, count=2)  # the own PEL: the same two
    assert worker._dispatch(fresh, 4) == 2
    assert worker._dispatch(again, 4) == 0
    assert worker._work.qsize() == 2
    worker._held.clear()  # as when their deliveries ended
    assert worker._dispatch(again, 4) == 2


def test_an_entry_claimed_while_its_thread_finishes_is_handed_out_once_that_thread_is_done(
        redis_server: RedisServer) -> None:
    """A thread releases its entry (a failed try) and, before it is done, a claim pass takes that entry
    back to this worker: it is not sent twice at once, and it does not wait out the visibility timeout
    either (the claim reset its idle time): it is queued again when the thread is done. Unless the
    thread settled it meanwhile, as Redis tells."""
    client = redis_client(redis_server.url)
    write_entries(client, 2, per=1)
    worker = Worker(WorkerConfig(redis_server.url, SITE_ID, API_KEY, consumer="me", rate_limit=0, concurrency=4))
    [(_, fresh)] = client.xreadgroup(KEYS.group, "me", {KEYS.work: ">"}, count=2)
    assert worker._dispatch(fresh, 4) == 2
    items = [worker._work.get_nowait() for _ in range(2)]
    entries = [item.entries[0] for item in items if item is not None]
    for entry in entries:
        worker._release(entry, "test")  # claimable at once
    worker._claim()
    assert worker._work.qsize() == 0 and sorted(worker._claimed_while_held) == sorted(e.entry_id for e in entries)
    worker._ack(entries[1])  # this one's thread settled it after all
    for item in items:
        assert item is not None
        worker._finished_item(item)
    again = worker._work.get_nowait()
    assert again is not None and [e.entry_id for e in again.entries] == [entries[0].entry_id]
    assert worker._work.qsize() == 0 and not worker._claimed_while_held


def test_claims_reach_idle_entries_behind_many_busy_ones(redis_server: RedisServer) -> None:
    """XAUTOCLAIM scans at most 10 x COUNT pending entries per call (COUNT: this worker's idle threads,
    here 1). A dead peer's idle entry behind more busy entries of a live peer than one claim pass scans
    is still reached (the next pass goes on where this one stopped), and claimed once."""
    client = redis_client(redis_server.url)
    busy = write_entries(client, 100, per=1)
    client.xreadgroup(KEYS.group, "live-peer", {KEYS.work: ">"}, count=len(busy))  # being delivered now
    dead = write_entries(client, 1, per=1)
    leave_idle(client, "dead-pod", dead)
    worker = Worker(WorkerConfig(redis_server.url, SITE_ID, API_KEY, consumer="me", rate_limit=0, concurrency=1))
    for _ in range(5):
        worker._claim()
    assert worker._work.qsize() == 1
    item = worker._work.get_nowait()
    assert item is not None and [entry.entry_id for entry in item.entries] == dead
    pending = client.xpending_range(KEYS.work, KEYS.group, "-", "+", 200, consumername="live-peer")
    assert len(pending) == len(busy)  # the busy ones were left where they were
