"""How a worker finishes with a work entry: each way out of the work stream is one MULTI, so no
half-done state survives a crash; plus the worker's Redis retry loop and throttled warnings.

A mixin of :class:`ciotrack.fleet.worker.Worker` (its state is the worker's), kept apart so the
worker module stays about reading and delivering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from ciotrack.fleet.metrics import Probes, WorkerMetrics
from ciotrack.fleet.settings import WorkerConfig
from ciotrack.fleet.streams import StoredBatch, StreamKeys, WorkEntry, encode_entry, entry_time

__all__ = ["Finishing", "rejected_reason"]

log = logging.getLogger("ciotrack.fleet")


def rejected_reason(reasons: Iterable[str]) -> str:
    """The error of a dead letter of operations Customer.io refused in a 207: its distinct reasons."""
    return "rejected: " + "; ".join(sorted(set(reasons)))[:500]


class Finishing:
    """Acknowledge, dead-letter, requeue or release entries (see the module docstring)."""

    redis: Any
    keys: StreamKeys
    consumer: str
    config: WorkerConfig
    metrics: WorkerMetrics
    probes: Probes
    _stop_delivery: threading.Event
    _last_warning: dict[str, float]
    _claim_soon: bool

    def _retire(self, pipe: Any, entry_id: str) -> None:
        """Queue on ``pipe`` (a MULTI) what takes an entry out of the work stream for good: acknowledged,
        deleted (never trimmed: see fleet-redis.md), and its try count and last error forgotten."""
        pipe.xack(self.keys.work, self.keys.group, entry_id)
        pipe.xdel(self.keys.work, entry_id)
        pipe.hdel(self.keys.tries, entry_id, f"{entry_id}:err")

    def _ack(self, *entries: WorkEntry) -> None:
        """Acknowledge delivered entries (those of one coalesced request together)."""
        def ack() -> None:
            pipe = self.redis.pipeline(transaction=True)
            for entry in entries:
                self._retire(pipe, entry.entry_id)
            pipe.execute()

        self._redis_call(ack)
        now = time.time()
        for entry in entries:
            self.metrics.batches_delivered.inc()
            self.metrics.delivery_latency.observe(max(0.0, now - entry_time(entry.entry_id)))

    def _dead_letter(self, entry: WorkEntry, batch: StoredBatch, error: str, tries: int) -> None:
        fields = self._dead_fields(entry, batch, error, tries)

        def move() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(self.keys.dead, fields)
            self._retire(pipe, entry.entry_id)
            pipe.execute()

        self._redis_call(move)
        self._counted_dead(entry, batch, error, tries)

    def _dead_fields(self, entry: WorkEntry, batch: StoredBatch, error: str, tries: int) -> dict[Any, Any]:
        """A dead letter of ``batch`` (all or part of ``entry``): the entry's fields, its operations, why
        and after how many tries, and the id it came from."""
        fields: dict[Any, Any] = {k: v for k, v in entry.fields.items() if k not in (b"body", b"offsets", b"count")}
        fields.update(encode_entry(batch.body, entry.region, entry.fields.get(b"producer", b"?").decode(),
                                   batch.offsets, int(entry.created_ms)))
        fields.update({b"error": error.encode("utf-8", "replace")[:2000], b"tries": str(tries).encode(),
                       b"dead_at": str(int(time.time() * 1000)).encode(), b"source_id": entry.entry_id.encode()})
        return fields

    def _counted_dead(self, entry: WorkEntry, batch: StoredBatch, error: str, tries: int) -> None:
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

    def _requeue(self, entry: WorkEntry, rest: StoredBatch, tries: int, rejected: list[bytes] | None = None,
                 why: str = "") -> None:
        """Replace ``entry`` by a new entry of ``rest`` (what a split left undelivered), in one MULTI with
        the dead letter of ``rejected``: operations of its delivered pieces that Customer.io refused
        (a 207), which no retry would change and which must not vanish with the old entry."""
        fields = encode_entry(rest.body, entry.region, entry.fields.get(b"producer", b"?").decode(), rest.offsets,
                              entry.created_ms)
        refused = StoredBatch.from_ops(rejected) if rejected else None
        dead = self._dead_fields(entry, refused, why, tries) if refused is not None else None

        def swap() -> None:
            # XADD inside MULTI returns the id only at EXEC: carry the tries over with a Lua-free
            # two-step (a crash between them only loses a try count).
            pipe = self.redis.pipeline(transaction=True)
            pipe.xadd(self.keys.work, fields)
            if dead is not None:
                pipe.xadd(self.keys.dead, dead)
            self._retire(pipe, entry.entry_id)
            new_id = pipe.execute()[0]
            if tries > 0:
                self.redis.hset(self.keys.tries, new_id, tries)

        self._redis_call(swap)
        self.metrics.released.labels("split_rest").inc()
        if refused is not None:
            self._counted_dead(entry, refused, why, tries)

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
