"""``ciotrack worker``: deliver the batches of a workspace's Redis stream to Customer.io.

One reader thread and ``concurrency`` delivery threads per process:

* The reader first re-reads this consumer's own pending entries (``XREADGROUP ... 0``: a restarted
  container keeps its host name and often its pid, hence its consumer name), then new ones
  (``XREADGROUP ... >`` with ``BLOCK`` well under the socket timeout). It reads what its idle delivery
  threads can send at once: one entry each, or with coalescing (the default) up to a body's worth of
  fresh entries each (:mod:`ciotrack.fleet.coalesce`: small entries share a request, each is settled on
  its own). Every entry's delivery deadline counts from when it was read, so none is held past the
  visibility timeout. Every few seconds it claims entries idle for longer than ``visibility_timeout``
  (``XAUTOCLAIM``): those of a dead or stalled worker; claimed entries always go alone.
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

**SIGTERM** (:meth:`Worker.drain`): stop reading, hand back what was read but not started, finish
in-flight deliveries until ``drain_timeout - 2`` s, hand back the rest in one round trip bounded by
what is left of ``drain_timeout`` (skipped past it: the visibility timeout recovers those entries);
exit 0 within ``drain_timeout``, even while Redis hangs. Idle consumers are removed only when their
pending list is empty.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ciotrack.fleet.coalesce import GroupBatch, shares
from ciotrack.fleet.credentials import REFUSED_CREDENTIALS, CredentialsPause
from ciotrack.fleet.finishing import rejected_reason
from ciotrack.fleet.limiter import RedisLimiter
from ciotrack.fleet.metrics import Probes, WorkerMetrics
from ciotrack.fleet.producer import connect
from ciotrack.fleet.reading import Reading, WorkItem
from ciotrack.fleet.settings import DEFAULT_ENDPOINTS, WorkerConfig
from ciotrack.fleet.streams import StoredBatch, StreamKeys, WorkEntry
from ciotrack.lifecycle import block_exit_signals

if TYPE_CHECKING:
    from ciotrack.delivery import Delivery, Result, Watch
    from ciotrack.destinations import Outcome

__all__ = ["Worker", "WorkerConfig"]

log = logging.getLogger("ciotrack.fleet")


class Worker(Reading):
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
        self._credentials = CredentialsPause(config.site_id, self.probes)
        self._draining = threading.Event()
        self._drain_started: float | None = None
        self._stop_delivery = threading.Event()  # set at the drain deadline: in-flight deliveries give up
        self._finishing = threading.Event()  # set once the drain hands entries back: read ones stay pending
        self._slots = threading.Semaphore(config.threads)
        self._work: queue.Queue[WorkItem | None] = queue.Queue()
        self._deliveries: dict[str, Delivery] = {}
        self._deliveries_lock = threading.Lock()
        self._in_flight: dict[str, WorkEntry] = {}
        self._in_flight_lock = threading.Lock()
        self._held: set[str] = set()
        self._claimed_while_held: dict[str, WorkEntry] = {}
        self._threads: list[threading.Thread] = []
        self._session: Any = None
        self._last_warning: dict[str, float] = {}
        self._claim_cursor = "0-0"
        self._claim_soon = False  # an entry was released: claim (it, or a peer's) without waiting
        self._entry_bytes = 0.0  # running mean of fresh entries' body sizes (0: none seen yet)

    def __repr__(self) -> str:
        return f"Worker(consumer={self.consumer!r}, stream={self.keys.work!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Read and deliver until :meth:`drain` is called (SIGTERM); returns the exit status (0).

        The reader runs on a thread of its own, so a drain never waits on a Redis call that hangs
        (redis-py retries one up to 10 times, each for the socket timeout): the drain's end is set by
        ``drain_timeout`` alone (see :meth:`_finish`)."""
        for n in range(self.config.threads):
            thread = threading.Thread(target=self._deliver_loop, name=f"ciotrack-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        failure: list[BaseException] = []

        def read() -> None:
            block_exit_signals()  # SIGTERM (the drain) must reach the main thread (lifecycle.py)
            try:
                self._read_loop()
            except BaseException as exc:  # re-raised by run(), after the drain
                # A read still blocked when the drain finishes fails on the connection _finish() closes
                # under it (ValueError/OSError from the socket): that is the drain's doing, not a failure.
                if not self._finishing.is_set():
                    failure.append(exc)

        reader = threading.Thread(target=read, name="ciotrack-worker-reader", daemon=True)
        reader.start()
        while reader.is_alive() and not self._draining.wait(0.5):
            pass
        started = self._drain_started if self._drain_started is not None else time.monotonic()
        end = started + self.config.drain_timeout
        log.info("ciotrack worker: draining: %d entries in flight, finishing them within %.0f s",
                 len(self._in_flight), self.config.drain_timeout)
        # A read under way ends within its BLOCK when Redis answers; its entries are queued, then handed
        # back below. One still hanging is left behind: what it may read later stays pending here and is
        # claimed after the visibility timeout.
        reader.join(max(0.0, min(end - 2.0, time.monotonic() + self.config.block_ms / 1000.0 + 1.0)
                        - time.monotonic()))
        self._finishing.set()
        self._finish(end)
        log.info("ciotrack worker: drained in %.1f s", time.monotonic() - started)
        if failure:
            raise failure[0]
        return 0

    def drain(self) -> None:
        """Stop reading (signal-safe: only sets a flag); ``run()`` then finishes in-flight work."""
        if not self._draining.is_set():
            self._drain_started = time.monotonic()
        self._draining.set()
        self.probes.draining = True

    def _finish(self, end: float) -> None:
        """Finish by ``end`` (the drain's start + ``drain_timeout``): deliveries until 2 s before it,
        then the entries still held are handed back in one round trip, bounded by what is left of it."""
        # Entries read but not started: hand them back at once, peers take them (while deliveries go on).
        queued: list[WorkEntry] = []
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                queued += item.entries
                with self._in_flight_lock:
                    self._held.difference_update(entry.entry_id for entry in item.entries)
                if item.holds_slot:
                    self._slots.release()
        deliver_until = end - 2.0
        if queued and self._release_within([(entry, False) for entry in queued], deliver_until, "drain"):
            queued = []
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deliver_until - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            # Drain deadline: deliveries waiting for a token or a backoff stop now (and release their
            # entries); those stuck in a request are released from here, so a peer takes them at once
            # and this process exits within its grace period. A request that still lands later only
            # makes a duplicate, which the event ids make harmless.
            self._stop_delivery.set()
            for thread in self._threads:
                thread.join(max(0.0, end - 1.5 - time.monotonic()))
            with self._in_flight_lock:
                stuck = list(self._in_flight.values())
            # With those queued whose hand-back failed: a release runs again harmlessly (finishing.py).
            self._release_within([(entry, True) for entry in stuck] + [(entry, False) for entry in queued],
                                 end - 0.5, "drain_timeout")
        elif queued:
            self._release_within([(entry, False) for entry in queued], end - 0.5, "drain")
        with self._deliveries_lock:
            for delivery in self._deliveries.values():
                if delivery.limiter is not None:
                    delivery.limiter.close()
                delivery.destination.close()
        if self._session is not None:
            self._session.close()
        self.redis.close()

    # -- delivering ---------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        block_exit_signals()  # SIGTERM (the drain) must reach the main thread (lifecycle.py)
        while True:
            item = self._work.get()
            if item is None:
                return
            with self._in_flight_lock:
                for entry in item.entries:
                    self._in_flight[entry.entry_id] = entry
                self.metrics.in_flight.set(len(self._in_flight))
            try:
                if self._credentials.remaining():
                    # Read before the key was refused: back to the stream untried, for a peer.
                    for entry in item.entries:
                        self._release(entry, "credentials")
                elif len(item.entries) == 1:
                    self._deliver(item.entries[0], item.deadline)
                else:
                    self._deliver_group(item.entries, item.deadline)
            except Exception:
                # A bug or a Redis outage longer than our retries: the entries stay pending and are
                # claimed again after the visibility timeout.
                self._warn("deliver", "delivering entry %s failed unexpectedly", item.entries[0].entry_id,
                           exc_info=True)
            finally:
                self._finished_item(item)

    def _finished_item(self, item: WorkItem) -> None:
        """A delivery thread is done with ``item``: its entries are no longer held here, its slot is free,
        and any of them a claim took meanwhile is handed out again."""
        with self._in_flight_lock:
            for entry in item.entries:
                self._in_flight.pop(entry.entry_id, None)
                self._held.discard(entry.entry_id)
            self.metrics.in_flight.set(len(self._in_flight))
            again = [self._claimed_while_held.pop(entry.entry_id) for entry in item.entries
                     if entry.entry_id in self._claimed_while_held]
        if item.holds_slot:
            self._slots.release()
        if again:
            try:
                self._hand_back_claimed(again)
            except Exception:  # Redis gone: they stay pending here, claimed after the visibility timeout
                self._warn("claimed", "could not hand out %d claimed entries again", len(again), exc_info=True)

    def _deliver_group(self, group: list[WorkEntry], deadline: float) -> None:
        """Several fresh entries as one request, each settled as if sent alone (:mod:`.coalesce`)."""
        from ciotrack.delivery import Job, Verdict

        tries = self._count_tries(group, 1)
        # A requeued rest carries the tries of its entry: it goes alone, under its own count.
        solo = [(entry, n) for entry, n in zip(group, tries, strict=True) if n > 1]
        if solo:
            for entry, n in solo:
                self._deliver(entry, deadline, tries=n)
            group = [entry for entry, n in zip(group, tries, strict=True) if n <= 1]
            if not group:
                return
        self.metrics.coalesced.inc(len(group))
        results = self._heed_credentials(self._delivery_for(group[0].region).deliver(Job(GroupBatch.join(group)),
                                                                                    deadline))
        if all(r.verdict is Verdict.DELIVERED and not r.failures for r in results):
            self.metrics.ops_delivered.inc(sum(entry.batch.count for entry in group))
            self._ack(*group)
            return
        for entry, share in zip(group, shares(group, results), strict=True):
            self.metrics.ops_delivered.inc(share.delivered - len(share.rejected))
            if share.rejected:
                self.metrics.ops_failed.labels("rejected").inc(len(share.rejected))
            if not share.undelivered:
                if share.rejected:
                    self._dead_letter(entry, StoredBatch.from_ops(share.rejected),
                                      rejected_reason(share.reasons), 1)
                else:
                    self._ack(entry)
            elif share.delivered:
                # Part of it went through (a 413 split): the rest goes back as a new entry, untried, and
                # what was refused in the delivered part is dead-lettered with it.
                self._requeue(entry, StoredBatch.from_ops(share.undelivered), 0, share.rejected,
                              rejected_reason(share.reasons))
            elif share.verdict is Verdict.EXHAUSTED:
                # Customer.io unreachable: not a try; left idle, claimed (alone) after the visibility timeout.
                self._count_tries([entry], -1)
                self.metrics.released.labels("exhausted").inc()
            else:
                # A final answer (or the drain): not counted against it, since the request carried other
                # entries too; claimed now and sent alone.
                reason = "unmerged" if share.verdict is Verdict.FAILED else (share.verdict or Verdict.STOPPED).value
                self._release(entry, "credentials" if self._credentials.remaining() else reason, uncount_try=True)

    def _heed_credentials(self, answers: Any) -> list[Result]:
        """The results of a delivery, those whose answer refused the key (401/403) turned into STOPPED:
        no try, the entry handed back (:mod:`ciotrack.fleet.credentials`); this worker pauses."""
        from dataclasses import replace

        from ciotrack.delivery import Verdict

        results = []
        for result in answers:
            if result.verdict is Verdict.FAILED and result.status in REFUSED_CREDENTIALS:
                self._credentials.refused(result.status)
                result = replace(result, verdict=Verdict.STOPPED, reason=f"credentials refused ({result.status})")
            elif result.verdict is Verdict.DELIVERED:
                self._credentials.accepted()
            results.append(result)
        return results

    def _count_tries(self, entries: list[WorkEntry], step: int) -> list[int]:
        def count() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for entry in entries:
                pipe.hincrby(self.keys.tries, entry.entry_id, step)
            return [int(n) for n in pipe.execute()]

        result: list[int] = self._redis_call(count)
        return result

    def _deliver(self, entry: WorkEntry, deadline: float, tries: int | None = None) -> None:
        """One entry alone; ``tries``: this try already counted (by a group that set it apart)."""
        from ciotrack.delivery import Job, Verdict

        config = self.config
        if tries is None:
            tries = int(self._redis_call(lambda: self.redis.hincrby(self.keys.tries, entry.entry_id, 1)))
        if tries > config.max_deliveries:
            error = self._redis_call(lambda: self.redis.hget(self.keys.tries, f"{entry.entry_id}:err"))
            reason = error.decode("utf-8", "replace") if error else "worker lost the entry mid-delivery every try"
            self._dead_letter(entry, entry.batch, reason, tries - 1)
            return
        delivery = self._delivery_for(entry.region)
        results = self._heed_credentials(delivery.deliver(Job(entry.batch), deadline))
        delivered = [r for r in results if r.verdict is Verdict.DELIVERED]
        failed = [r for r in results if r.verdict is Verdict.FAILED]
        unfinished = [r for r in results if r.verdict not in (Verdict.DELIVERED, Verdict.FAILED)]
        for result in delivered:
            self.metrics.ops_delivered.inc(result.job.batch.count - len(result.failures))
        rejected = [op for r in delivered for i, op in self._rejected_ops(r)]
        why_rejected = rejected_reason(why for r in delivered for _, why in r.failures) if rejected else ""
        if not failed and not unfinished:
            if rejected:
                self.metrics.ops_failed.labels("rejected").inc(len(rejected))
                self._dead_letter(entry, StoredBatch.from_ops(rejected), why_rejected, tries)
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
            # Some halves of a split went through: put back only what is left, as a new entry, and
            # dead-letter what Customer.io refused in those halves.
            rest = [op for r in failed + unfinished for op in r.job.batch.ops()]
            if rejected:
                self.metrics.ops_failed.labels("rejected").inc(len(rejected))
            self._requeue(entry, StoredBatch.from_ops(rest), tries if failed else tries - 1, rejected, why_rejected)
            return
        verdict = (failed or unfinished)[-1].verdict.value
        if unfinished and unfinished[-1].verdict is Verdict.EXHAUSTED:
            # Customer.io is unreachable: leave the entry idle; it is claimed again after the
            # visibility timeout, which is the backoff.
            self.metrics.released.labels("exhausted").inc()
            return
        self._release(entry, "credentials" if self._credentials.remaining() and unfinished else verdict)

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
                                    recorder=self.metrics, watch=self._watch(destination.url, region))
                self._deliveries[region] = delivery
            return delivery

    def _watch(self, endpoint: str, region: str) -> Watch:
        """Logs what keeps delivery from working while it lasts (connection refused, DNS, TLS, timeouts,
        5xx, 429) and its recovery, as the embedded tracker does (:mod:`ciotrack.delivery_watch`): neither
        ``/readyz`` nor the exit status shows it. A refused key is left to :class:`CredentialsPause`,
        which logs it once per pause."""
        from ciotrack.delivery_watch import DeliveryWatch

        def held_ops() -> int:  # the operations of the entries this worker is delivering
            with self._in_flight_lock:
                return sum(entry.batch.count for entry in self._in_flight.values())

        watch = DeliveryWatch(endpoint=endpoint, region=region, site_id=self.config.site_id, queue_depth=held_ops)
        return _NotCredentials(watch)


class _NotCredentials:
    """A :class:`ciotrack.delivery.Watch` that passes on every answer but a refused key (401/403)."""

    def __init__(self, watch: Watch) -> None:
        self._watch = watch

    def answered(self, outcome: Outcome, seconds: float, ops: int, body_bytes: int) -> None:
        if outcome.status not in REFUSED_CREDENTIALS:
            self._watch.answered(outcome, seconds, ops, body_bytes)
