"""How a worker finishes with a work entry, plus its Redis retry loop and throttled warnings.

Each way out of the work stream (acknowledge, dead-letter, requeue, release) is one atomic step, so no
half-done state survives a crash, and each is **idempotent**: ``_redis_call`` (and redis-py's own retry)
runs a step again after a ConnectionError or TimeoutError, which may follow a step Redis did run (the
reply was lost to a reset or a failover). XACK, XDEL and XCLAIM are idempotent by nature; XADD and
HINCRBY are not, so the steps holding them are Lua scripts that first check the source entry is
still pending (and, for a release, still ours and not yet released) and do nothing otherwise. Scripts
are fine on Redis 7.0; every key they touch shares the workspace's hash tag (one Cluster slot).

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


# The retirement of the entry ARGV[2] (group ARGV[1]) from KEYS[1] (work) and KEYS[2] (tries): acknowledged,
# deleted (never trimmed: see fleet-redis.md), its try count and last error forgotten.
_RETIRE = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2], ARGV[2] .. ':err')
"""
# Nothing when the entry is no longer pending: this step (or a peer's acknowledgement) already ran.
_IF_PENDING = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) == 0 then return false end
"""

# KEYS: work, tries, dead. ARGV: group, entry id, then the dead letter's fields (name, value, ...).
# Returns 1, or nil when the entry was already retired.
_DEAD_LETTER = _IF_PENDING + """
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
""" + _RETIRE + "return 1"

# KEYS: work, tries, dead. ARGV: group, entry id, tries to carry over to the new entry, n, the new
# entry's fields (n values), then a dead letter's fields (none: no dead letter). Returns the new id,
# or nil when the entry was already retired (its rest already written).
_REQUEUE = _IF_PENDING + """
local n = tonumber(ARGV[4])
local new_id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 5, 4 + n))
if #ARGV > 4 + n then redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5 + n)) end
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[2], new_id, ARGV[3]) end
""" + _RETIRE + "return new_id"

# KEYS: work, tries. ARGV: group, consumer, idle ms (the visibility timeout + 1), then pairs (entry id,
# 1 to take back its try or 0). Releases the entries still pending at this consumer and not released
# yet (idle below the visibility timeout, which a live worker's entries always are): XCLAIM JUSTID (no
# delivery-count bump) IDLE (claimable by anyone's next XAUTOCLAIM). Run again, it takes no try back
# twice, and it never takes an entry back from a peer that claimed it. Returns how many it released.
_RELEASE = """
local released = 0
local idle = tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] and tonumber(p[1][3]) < idle then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', idle, 'JUSTID')
    if ARGV[i + 1] == '1' then redis.call('HINCRBY', KEYS[2], ARGV[i], -1) end
    released = released + 1
  end
end
return released
"""


def run_script(client: Any, script: str, keys: list[str], args: list[Any]) -> Any:
    """``script`` on ``client`` through redis-py's ``Script`` (EVALSHA, loading the script when Redis
    does not know it). ``client`` is passed to each call, so a wrapped client is the one that runs it."""
    return client.register_script(script)(keys=keys, args=args, client=client)


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
        deleted (never trimmed: see fleet-redis.md), and its try count and last error forgotten. All
        idempotent, so an acknowledgement needs no script."""
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
        args = [self.keys.group, entry.entry_id, *_flat(fields)]
        self._redis_call(lambda: run_script(self.redis, _DEAD_LETTER, self._script_keys(), args))
        self._counted_dead(entry, batch, error, tries)

    def _script_keys(self) -> list[str]:
        return [self.keys.work, self.keys.tries, self.keys.dead]

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
        dead = {**fields, b"error": error.encode()[:2000], b"source_id": ident.encode()}
        # On a Redis error the entry stays pending and comes back (claimed) later.
        run_script(self.redis, _DEAD_LETTER, self._script_keys(), [self.keys.group, ident, *_flat(dead)])
        self.metrics.dead_letters.inc()
        self._warn("dead", "entry %s is unreadable, moved to the dead-letter stream: %s", ident, error)

    def _requeue(self, entry: WorkEntry, rest: StoredBatch, tries: int, rejected: list[bytes] | None = None,
                 why: str = "") -> None:
        """Replace ``entry`` by a new entry of ``rest`` (what a split left undelivered), carrying its
        ``tries``, in one script with the dead letter of ``rejected``: operations of its delivered pieces
        that Customer.io refused (a 207), which no retry would change and which must not vanish with the
        old entry."""
        fields = encode_entry(rest.body, entry.region, entry.fields.get(b"producer", b"?").decode(), rest.offsets,
                              entry.created_ms)
        refused = StoredBatch.from_ops(rejected) if rejected else None
        dead = self._dead_fields(entry, refused, why, tries) if refused is not None else None
        rest_fields = _flat(fields)
        args = [self.keys.group, entry.entry_id, max(0, tries), len(rest_fields), *rest_fields,
                *(_flat(dead) if dead is not None else [])]
        self._redis_call(lambda: run_script(self.redis, _REQUEUE, self._script_keys(), args))
        self.metrics.released.labels("split_rest").inc()
        if refused is not None:
            self._counted_dead(entry, refused, why, tries)

    def _release(self, entry: WorkEntry, reason: str, uncount_try: bool = False) -> None:
        """Hand an unfinished entry back: claimable at once (its idle time set past the timeout)."""
        args = self._release_args([(entry, uncount_try)])
        try:
            self._redis_call(lambda: run_script(self.redis, _RELEASE, self._script_keys()[:2], args), attempts=5)
            self._claim_soon = True
        except Exception:
            self._warn("release", "could not release entry %s; it is claimed after the visibility timeout",
                       entry.entry_id)
        self.metrics.released.labels(reason).inc()

    def _release_within(self, entries: list[tuple[WorkEntry, bool]], until: float, reason: str) -> bool:
        """Release ``entries`` (with "take its try back" flags) in one script call, by ``until``
        (``time.monotonic()``): at shutdown, when Redis may hang. A client of its own (no retries, its
        socket timeout what is left) on a thread joined until ``until``, so neither the handshake nor
        a hung Redis can hold the drain past it. False when not done by then: those entries stay
        pending and are claimed after the visibility timeout (nothing is lost)."""
        from ciotrack.fleet.producer import connect
        from ciotrack.lifecycle import block_exit_signals

        if not entries:
            return True
        left = until - time.monotonic()
        done = threading.Event()
        if left > 0.05:
            args = self._release_args(entries)

            def release() -> None:
                block_exit_signals()
                client = connect(self.config.redis_url, socket_timeout=left, retries=0)
                try:
                    run_script(client, _RELEASE, self._script_keys()[:2], args)
                    done.set()
                except Exception:
                    pass  # reported below
                finally:
                    client.close()

            threading.Thread(target=release, name="ciotrack-worker-release", daemon=True).start()
            done.wait(max(0.0, until - time.monotonic()))
        if not done.is_set():
            log.warning("ciotrack worker: could not hand back %d entries before the drain deadline; they are "
                        "claimed after the visibility timeout", len(entries))
            return False
        self.metrics.released.labels(reason).inc(len(entries))
        return True

    def _release_args(self, entries: Iterable[tuple[WorkEntry, bool]]) -> list[Any]:
        args: list[Any] = [self.keys.group, self.consumer, int(self.config.visibility_timeout * 1000) + 1]
        for entry, uncount_try in entries:
            args += [entry.entry_id, 1 if uncount_try else 0]
        return args

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


def _flat(fields: dict[Any, Any]) -> list[Any]:
    """A stream entry's fields as XADD's arguments: name, value, name, value ..."""
    return [item for pair in fields.items() for item in pair]
