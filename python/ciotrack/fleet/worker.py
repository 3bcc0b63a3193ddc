"""``ciotrack worker``: deliver the batches of a workspace's Redis stream to Customer.io.

One reader thread and ``concurrency`` delivery threads per process:

* The reader first re-reads this consumer's own pending entries (``XREADGROUP ... 0``: a restarted
  container keeps its host name and often its pid, hence its consumer name), then new ones
  (``XREADGROUP ... >`` with ``BLOCK`` well under the socket timeout). It reads only as many entries
  as it has idle delivery threads, so entries never wait in this process while the visibility clock
  runs. Every few seconds it claims entries idle for longer than ``visibility_timeout``
  (``XAUTOCLAIM``): those of a dead or stalled worker.
* A delivery thread counts the try (``HINCRBY tries``) *before* sending, so a worker killed mid-way
  counts as a try too; sends through :class:`ciotrack.delivery.Delivery` (status table, retries,
  413 split) with the Track API v2 destination and the shared :class:`RedisLimiter`; then
  ``XACK`` + ``XDEL`` in one transaction. A final 4xx is a try: the entry is handed back at once
  (released) and dead-lettered at ``max_deliveries``; a 207's rejected operations are
  dead-lettered right away (they will never be accepted) and the rest acknowledged.

**Why claims after a visibility timeout, and no heartbeat** (``XCLAIM JUSTID`` to keep entries
fresh): every delivery here is bounded by a deadline of ``visibility_timeout - request_timeout - 5``
seconds, after which the entry is released. A live worker therefore never holds an entry long enough
to be claimed, and there is no extra thread whose stall could make a live worker look dead (or a dead
one look alive). Released entries are made claimable at once by ``XCLAIM ... IDLE <visibility>``.

**SIGTERM** (:meth:`Worker.drain`): stop reading, finish in-flight deliveries until ``drain_timeout -
1`` s, release the rest; exit 0. Idle consumers are removed only when their pending list is empty.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ciotrack.fleet.limiter import RedisLimiter
from ciotrack.fleet.metrics import Probes, WorkerMetrics
from ciotrack.fleet.producer import connect
from ciotrack.fleet.settings import DEFAULT_ENDPOINTS, WorkerConfig
from ciotrack.fleet.streams import (
    EntryFormatError,
    StoredBatch,
    StreamKeys,
    WorkEntry,
    decode_entry,
    encode_entry,
    ensure_group,
    entry_time,
    remove_idle_consumers,
)

if TYPE_CHECKING:
    from ciotrack.delivery import Delivery, Result

__all__ = ["Worker", "WorkerConfig"]

log = logging.getLogger("ciotrack.fleet")

class Worker:
    """Consumes one workspace's stream (see the module docstring). ``run()`` blocks until drained."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics | None = None) -> None:
        config.validate()
        self.config = config
        self.keys = StreamKeys.for_site(config.site_id, config.prefix)
        self.consumer = config.consumer or f"{socket.gethostname()}-{os.getpid()}"
        # The socket timeout stays well above the XREADGROUP BLOCK: redis-py raises TimeoutError on a
        # block longer than socket_timeout (redis/redis-py#2807).
        self.redis = connect(config.redis_url, socket_timeout=config.block_ms / 1000.0 + 5.0)
        self.metrics = metrics or WorkerMetrics()
        self.probes = Probes(stall=max(30.0, config.block_ms / 1000.0 * 10))
        self._draining = threading.Event()
        self._drain_started: float | None = None
        self._stop_delivery = threading.Event()  # set at the drain deadline: in-flight deliveries give up
        self._slots = threading.Semaphore(config.threads)
        self._work: queue.Queue[WorkEntry | None] = queue.Queue()
        self._deliveries: dict[str, Delivery] = {}
        self._deliveries_lock = threading.Lock()
        self._in_flight: dict[str, WorkEntry] = {}
        self._in_flight_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._session: Any = None
        self._last_warning: dict[str, float] = {}
        self._claim_soon = False  # an entry was released: claim (it, or a peer's) without waiting

    def __repr__(self) -> str:
        return f"Worker(consumer={self.consumer!r}, stream={self.keys.work!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Read and deliver until :meth:`drain` is called (SIGTERM); returns the exit status (0)."""
        for n in range(self.config.threads):
            thread = threading.Thread(target=self._deliver_loop, name=f"ciotrack-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            self._read_loop()
        finally:
            self._finish()
        return 0

    def drain(self) -> None:
        """Stop reading (signal-safe: only sets a flag); ``run()`` then finishes in-flight work."""
        if not self._draining.is_set():
            self._drain_started = time.monotonic()
        self._draining.set()
        self.probes.draining = True

    def _finish(self) -> None:
        started = self._drain_started if self._drain_started is not None else time.monotonic()
        deadline = started + max(0.0, self.config.drain_timeout - 1.0)
        # Entries read but not started: hand them back at once, peers take them.
        while True:
            try:
                entry = self._work.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                self._release(entry, "drain")
                self._slots.release()
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            # Drain deadline: deliveries waiting for a token or a backoff stop now (and release their
            # entries); those stuck in a request are released from here, so a peer takes them at once
            # and this process exits within its grace period. A request that still lands later only
            # makes a duplicate, which the event ids make harmless.
            self._stop_delivery.set()
            for thread in self._threads:
                thread.join(max(0.0, min(1.0, deadline + 1.0 - time.monotonic())))
            with self._in_flight_lock:
                stuck = list(self._in_flight.values())
            for entry in stuck:
                self._release(entry, "drain_timeout", uncount_try=True)
        with self._deliveries_lock:
            for delivery in self._deliveries.values():
                if delivery.limiter is not None:
                    delivery.limiter.close()
                delivery.destination.close()
        if self._session is not None:
            self._session.close()
        self.redis.close()

    # -- reading ------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        import redis as redis_module

        config = self.config
        claim_every = config.claim_interval or max(1.0, min(10.0, config.visibility_timeout / 4))
        next_claim = next_stats = next_janitor = 0.0
        own_pending = True  # first our own PEL (a previous life of this consumer), then new entries
        pending_cursor = "0"
        group_ready = False
        backoff = 0.1
        while not self._draining.is_set():
            self.probes.tick()
            try:
                if not group_ready:
                    ensure_group(self.redis, self.keys)
                    group_ready = True
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + config.stats_interval
                    self._update_gauges()
                if now >= next_janitor:
                    next_janitor = now + max(60.0, config.visibility_timeout)
                    self._remove_idle_consumers()
                if now >= next_claim or self._claim_soon:
                    self._claim_soon = False
                    next_claim = now + claim_every
                    self._claim()
                slots = self._take_slots(1.0)
                if not slots:
                    continue
                used = 0
                try:
                    reply: Any
                    if own_pending:
                        # Our PEL from a previous life, page by page: an id returns pending entries
                        # after it, so the cursor keeps us from re-reading what we now deliver.
                        reply = self.redis.xreadgroup(self.keys.group, self.consumer,
                                                      {self.keys.work: pending_cursor}, count=slots)
                    else:
                        reply = self.redis.xreadgroup(self.keys.group, self.consumer, {self.keys.work: ">"},
                                                      count=slots, block=config.block_ms)
                    entries = reply[0][1] if reply else []
                    if own_pending:
                        if entries:
                            last = entries[-1][0]
                            pending_cursor = last.decode() if isinstance(last, bytes) else str(last)
                        else:
                            own_pending = False
                    used = self._dispatch(entries)
                finally:
                    for _ in range(slots - used):
                        self._slots.release()
                self.probes.redis_ok = True
                backoff = 0.1
            except (redis_module.ConnectionError, redis_module.TimeoutError, redis_module.BusyLoadingError,
                    OSError) as exc:
                self.probes.redis_ok = False
                self._warn("read", "Redis unreachable (%s); retrying", type(exc).__name__)
                self._draining.wait(min(backoff, 2.0))
                backoff *= 2
            except redis_module.ResponseError as exc:
                if "NOGROUP" in str(exc) or "no such key" in str(exc):
                    group_ready = False  # the stream or its group was deleted: create them again
                self.probes.redis_ok = False
                self._warn("read", "Redis answered %s; retrying", str(exc)[:120])
                self._draining.wait(min(backoff, 2.0))
                backoff *= 2

    def _take_slots(self, wait: float) -> int:
        """Idle delivery threads (at least one, waiting up to ``wait`` s); 0 when none freed up."""
        if not self._slots.acquire(timeout=wait):
            return 0
        taken = 1
        while taken < self.config.threads and self._slots.acquire(blocking=False):
            taken += 1
        return taken

    def _dispatch(self, entries: list[Any]) -> int:
        """Queue decoded entries for the delivery threads; returns how many slots they use."""
        used = 0
        for entry_id, fields in entries:
            if not fields:  # deleted after it was read (acknowledged by another consumer)
                continue
            try:
                entry = decode_entry(entry_id, fields)
            except EntryFormatError as exc:
                try:
                    self._dead_letter_raw(entry_id, fields, str(exc))
                except Exception:  # stays pending; claimed (and dead-lettered) again later
                    self._warn("dead", "could not dead-letter unreadable entry %s", entry_id)
                continue
            self._work.put(entry)
            used += 1
        return used

    def _claim(self) -> None:
        """Take entries idle longer than the visibility timeout (their worker died or stalled)."""
        min_idle = int(self.config.visibility_timeout * 1000)
        cursor = "0-0"
        while not self._draining.is_set():
            slots = self._take_slots(0.0)
            if not slots:
                return
            used = 0
            try:
                reply: Any = self.redis.xautoclaim(self.keys.work, self.keys.group, self.consumer, min_idle,
                                              start_id=cursor, count=slots)
                cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                used = self._dispatch(reply[1])
            finally:
                for _ in range(slots - used):
                    self._slots.release()
            if used:
                self.metrics.claimed.inc(used)
            if cursor == "0-0" or not reply[1]:
                return

    def _update_gauges(self) -> None:
        for group in self.redis.xinfo_groups(self.keys.work):
            name = group.get("name")
            if name in (self.keys.group, self.keys.group.encode()):
                if group.get("lag") is not None:
                    self.metrics.lag.set(group["lag"])
                self.metrics.pending.set(group.get("pending") or 0)
        self.metrics.dead_length.set(self.redis.xlen(self.keys.dead))

    def _remove_idle_consumers(self) -> None:
        idle_ms = int(self.config.visibility_timeout * 10 * 1000)
        for name in remove_idle_consumers(self.redis, self.keys, idle_ms, keep=self.consumer):
            log.info("ciotrack worker: removed idle consumer %s (no pending entries)", name)

    # -- delivering ---------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        while True:
            entry = self._work.get()
            if entry is None:
                return
            with self._in_flight_lock:
                self._in_flight[entry.entry_id] = entry
                self.metrics.in_flight.set(len(self._in_flight))
            try:
                self._deliver(entry)
            except Exception:
                # A bug or a Redis outage longer than our retries: the entry stays pending and is
                # claimed again after the visibility timeout.
                self._warn("deliver", "delivering entry %s failed unexpectedly", entry.entry_id, exc_info=True)
            finally:
                with self._in_flight_lock:
                    self._in_flight.pop(entry.entry_id, None)
                    self.metrics.in_flight.set(len(self._in_flight))
                self._slots.release()

    def _deliver(self, entry: WorkEntry) -> None:
        from ciotrack.delivery import Job, Verdict

        config = self.config
        tries = int(self._redis_call(lambda: self.redis.hincrby(self.keys.tries, entry.entry_id, 1)))
        if tries > config.max_deliveries:
            error = self._redis_call(lambda: self.redis.hget(self.keys.tries, f"{entry.entry_id}:err"))
            reason = error.decode("utf-8", "replace") if error else "worker lost the entry mid-delivery every try"
            self._dead_letter(entry, entry.batch, reason, tries - 1)
            return
        delivery = self._delivery_for(entry.region)
        results = list(delivery.deliver(Job(entry.batch), time.monotonic() + config.delivery_deadline))
        delivered = [r for r in results if r.verdict is Verdict.DELIVERED]
        failed = [r for r in results if r.verdict is Verdict.FAILED]
        unfinished = [r for r in results if r.verdict not in (Verdict.DELIVERED, Verdict.FAILED)]
        for result in delivered:
            self.metrics.ops_delivered.inc(result.job.batch.count - len(result.failures))
        rejected = [op for r in delivered for i, op in self._rejected_ops(r)]
        if not failed and not unfinished:
            reasons = sorted({why for r in delivered for _, why in r.failures})
            if rejected:
                self.metrics.ops_failed.labels("rejected").inc(len(rejected))
                self._dead_letter(entry, StoredBatch.from_ops(rejected), "rejected: " + "; ".join(reasons)[:500],
                                  tries)
            else:
                self._ack(entry)
            return
        if failed:
            reason = failed[-1].reason
            self._redis_call(lambda: self.redis.hset(self.keys.tries, f"{entry.entry_id}:err",
                                                     f"{failed[-1].status}: {reason}"[:1000]))
            if not unfinished and tries >= config.max_deliveries:
                whole = len(results) == 1 and results[0].job.batch is entry.batch
                # The whole entry failed: keep its exact bytes (what an operator needs to see).
                batch = entry.batch if whole else StoredBatch.from_ops(
                    [op for r in failed for op in r.job.batch.ops()] + rejected)
                self.metrics.ops_failed.labels("dead_letter").inc(batch.count)
                self._dead_letter(entry, batch, f"{failed[-1].status}: {reason}", tries)
                return
        else:
            # Not a try: Customer.io did not answer for good (retries ran out, deadline, drain).
            self._redis_call(lambda: self.redis.hincrby(self.keys.tries, entry.entry_id, -1))
        if delivered:
            # Some halves of a split went through: put back only what is left, as a new entry.
            rest = [op for r in failed + unfinished for op in r.job.batch.ops()]
            self._requeue(entry, StoredBatch.from_ops(rest), tries if failed else tries - 1)
            return
        verdict = (failed or unfinished)[-1].verdict.value
        if unfinished and unfinished[-1].verdict is Verdict.EXHAUSTED:
            # Customer.io is unreachable: leave the entry idle; it is claimed again after the
            # visibility timeout, which is the backoff.
            self.metrics.released.labels("exhausted").inc()
            return
        self._release(entry, verdict)

    @staticmethod
    def _rejected_ops(result: Result) -> list[tuple[int, bytes]]:
        if not result.failures:
            return []
        ops = result.job.batch.ops()
        return [(i, ops[i]) for i, _ in result.failures]

    def _delivery_for(self, region: str) -> Delivery:
        from ciotrack.delivery import Delivery
        from ciotrack.destinations.track_v2 import TrackV2Destination, make_session
        from ciotrack.retry import RetryPolicy

        config = self.config
        if region not in DEFAULT_ENDPOINTS:
            region = config.region
        with self._deliveries_lock:
            delivery = self._deliveries.get(region)
            if delivery is None:
                if self._session is None:
                    self._session = make_session(config.threads, hosts=2, user_agent_suffix="worker")
                    self._session.trust_env = False if config.endpoint else self._session.trust_env
                endpoint = config.endpoint or DEFAULT_ENDPOINTS[region]
                destination = TrackV2Destination(self._session, endpoint, config.site_id, config.api_key,
                                                 timeout=config.request_timeout, name=region)
                limiter = (RedisLimiter(connect(config.redis_url), config.site_id, region, config.rate_limit,
                                        config.burst, prefix=config.prefix) if config.rate_limit > 0 else None)
                policy = RetryPolicy(retry_budget=config.delivery_deadline)
                delivery = Delivery(destination, limiter=limiter, policy=policy, stop=self._stop_delivery,
                                    recorder=self.metrics)
                self._deliveries[region] = delivery
            return delivery

    # -- finishing an entry (each a MULTI, so no half-done state survives a crash) ---------------

    def _retire(self, pipe: Any, entry_id: str) -> None:
        """Queue on ``pipe`` (a MULTI) what takes an entry out of the work stream for good: acknowledged,
        deleted (never trimmed: see fleet-redis.md), and its try count and last error forgotten."""
        pipe.xack(self.keys.work, self.keys.group, entry_id)
        pipe.xdel(self.keys.work, entry_id)
        pipe.hdel(self.keys.tries, entry_id, f"{entry_id}:err")

    def _ack(self, entry: WorkEntry) -> None:
        def ack() -> None:
            pipe = self.redis.pipeline(transaction=True)
            self._retire(pipe, entry.entry_id)
            pipe.execute()

        self._redis_call(ack)
        self.metrics.batches_delivered.inc()
        self.metrics.delivery_latency.observe(max(0.0, time.time() - entry_time(entry.entry_id)))

    def _dead_letter(self, entry: WorkEntry, batch: StoredBatch, error: str, tries: int) -> None:
        fields: dict[Any, Any] = {k: v for k, v in entry.fields.items() if k not in (b"body", b"offsets", b"count")}
        fields.update(encode_entry(batch.body, entry.region, entry.fields.get(b"producer", b"?").decode(),
                                   batch.offsets, int(entry.created_ms)))
        fields.update({b"error": error.encode("utf-8", "replace")[:2000], b"tries": str(tries).encode(),
                       b"dead_at": str(int(time.time() * 1000)).encode(), b"source_id": entry.entry_id.encode()})

        def move() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(self.keys.dead, fields)
            self._retire(pipe, entry.entry_id)
            pipe.execute()

        self._redis_call(move)
        self.metrics.dead_letters.inc()
        self._warn("dead", "entry %s (%d operations) moved to the dead-letter stream after %d tries: %s",
                   entry.entry_id, batch.count, tries, error[:200])

    def _dead_letter_raw(self, entry_id: Any, fields: dict[Any, Any], error: str) -> None:
        ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead, {**fields, b"error": error.encode()[:2000], b"source_id": ident.encode()})
        self._retire(pipe, ident)
        pipe.execute()  # on a Redis error the entry stays pending and comes back (claimed) later
        self.metrics.dead_letters.inc()
        self._warn("dead", "entry %s is unreadable, moved to the dead-letter stream: %s", ident, error)

    def _requeue(self, entry: WorkEntry, rest: StoredBatch, tries: int) -> None:
        fields = encode_entry(rest.body, entry.region, entry.fields.get(b"producer", b"?").decode(), rest.offsets,
                              entry.created_ms)

        def swap() -> None:
            # XADD inside MULTI returns the id only at EXEC: carry the tries over with a Lua-free
            # two-step (a crash between them only loses a try count).
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(self.keys.work, fields)  # type: ignore[arg-type]
            self._retire(pipe, entry.entry_id)
            new_id = pipe.execute()[0]
            if tries > 0:
                self.redis.hset(self.keys.tries, new_id, tries)

        self._redis_call(swap)
        self.metrics.released.labels("split_rest").inc()

    def _release(self, entry: WorkEntry, reason: str, uncount_try: bool = False) -> None:
        """Hand an unfinished entry back: claimable at once (its idle time set past the timeout)."""
        idle = int(self.config.visibility_timeout * 1000) + 1

        def release() -> None:
            pipe = self.redis.pipeline(transaction=True)
            # JUSTID: no delivery-count bump; IDLE: claimable by anyone's next XAUTOCLAIM.
            pipe.xclaim(self.keys.work, self.keys.group, self.consumer, 0, [entry.entry_id], idle=idle, justid=True)
            if uncount_try:
                pipe.hincrby(self.keys.tries, entry.entry_id, -1)
            pipe.execute()

        try:
            self._redis_call(release, attempts=5)
            self._claim_soon = True
        except Exception:
            self._warn("release", "could not release entry %s; it is claimed after the visibility timeout",
                       entry.entry_id)
        self.metrics.released.labels(reason).inc()

    def _redis_call(self, call: Any, attempts: int | None = None) -> Any:
        """Run ``call`` until Redis answers (it may be restarting), at most until the drain deadline."""
        import redis as redis_module

        delay = 0.05
        n = 0
        while True:
            try:
                result = call()
                self.probes.redis_ok = True
                return result
            except (redis_module.ConnectionError, redis_module.TimeoutError, redis_module.BusyLoadingError,
                    OSError) as exc:
                n += 1
                self.probes.redis_ok = False
                if (attempts is not None and n >= attempts) or self._stop_delivery.is_set():
                    raise
                self._warn("call", "Redis unreachable (%s); retrying", type(exc).__name__)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _warn(self, key: str, message: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(key, float("-inf")) >= 10.0:
            self._last_warning[key] = now
            log.warning("ciotrack worker: " + message, *args, exc_info=exc_info)
