"""How a worker reads its stream: its own pending entries first, then new ones, and claims of entries
idle past the visibility timeout; each read is dispatched to the delivery threads as work items.

A mixin of :class:`ciotrack.fleet.worker.Worker` (its state is the worker's), kept apart so the
worker module stays about its lifecycle and delivering.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from ciotrack.fleet.coalesce import MAX_BODY_BYTES, pack
from ciotrack.fleet.credentials import CredentialsPause
from ciotrack.fleet.finishing import Finishing
from ciotrack.fleet.streams import (
    EntryFormatError,
    WorkEntry,
    decode_entry,
    ensure_group,
    remove_idle_consumers,
)

__all__ = ["Reading", "WorkItem"]

log = logging.getLogger("ciotrack.fleet")

# Fresh entries read per idle delivery thread, at most: a full body's worth of entries of the average
# size seen (see _fresh_per_slot), so coalesced groups rarely outnumber the threads that send them.
_MAX_FRESH_PER_SLOT = 32

# XAUTOCLAIM pages per claim pass, at most (each scans up to 10 x idle threads pending entries): bounds
# the time a pass keeps the reader from reading while the cursor walks a long pending list.
_CLAIM_PAGES_PER_PASS = 8


@dataclass(slots=True)
class WorkItem:
    """What one delivery thread sends: one entry, or several fresh ones coalesced into one request."""

    entries: list[WorkEntry]
    deadline: float
    """``time.monotonic()`` by which it is delivered or released: counted from when it was read, so a
    live worker never holds an entry past the visibility timeout, however long it waited here."""
    holds_slot: bool = True
    """False for a group read beyond the idle threads (releases no slot when done)."""


class Reading(Finishing):
    """Read, claim and dispatch (see the module docstring)."""

    _draining: threading.Event
    _slots: threading.Semaphore
    _work: queue.Queue[WorkItem | None]
    _entry_bytes: float
    _held: set[str]
    """Ids of the entries queued for or being delivered by this process (under ``_in_flight_lock``)."""
    _claimed_while_held: dict[str, WorkEntry]
    """Entries a claim returned while this process still held them (under ``_in_flight_lock``): handed
    out again once their thread is done with them (see :meth:`_dispatch`)."""
    _credentials: CredentialsPause
    _finishing: threading.Event
    _claim_cursor: str
    """Where the next XAUTOCLAIM starts: kept across claim passes (see :meth:`_claim`)."""
    _in_flight_lock: threading.Lock

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
                paused = self._credentials.remaining()
                if paused:
                    # Customer.io refused our key: read and claim nothing meanwhile (peers may have a
                    # good one); the liveness tick goes on, readiness says not ready.
                    self._draining.wait(min(paused, 1.0))
                    continue
                # Claims wait for the end of the own-pending pass: XAUTOCLAIM moves entries into this
                # consumer's PEL, where an XREADGROUP 0 of the same pass would read them a second time.
                if not own_pending and (now >= next_claim or self._claim_soon):
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
                                                      count=slots * self._fresh_per_slot(), block=config.block_ms)
                    entries = reply[0][1] if reply else []
                    if own_pending:
                        if entries:
                            last = entries[-1][0]
                            pending_cursor = last.decode() if isinstance(last, bytes) else str(last)
                        else:
                            own_pending = False
                    used = self._dispatch(entries, slots, coalesce=config.coalesce and not own_pending)
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

    def _fresh_per_slot(self) -> int:
        if not self.config.coalesce or not self._entry_bytes:
            return 1
        return max(1, min(_MAX_FRESH_PER_SLOT, round(MAX_BODY_BYTES / self._entry_bytes)))

    def _dispatch(self, entries: list[Any], slots: int, coalesce: bool = False, claimed: bool = False) -> int:
        """Queue decoded entries for the delivery threads, coalesced into groups when ``coalesce``
        (fresh entries only); returns how many of the ``slots`` taken they use.

        An entry this process already holds (queued or being delivered) is skipped, so no entry is ever
        sent by two of its threads at once, whichever read returned it again. A ``claimed`` one (a claim
        of an entry its thread released a moment ago and is still finishing with) is now pending here
        with its idle time reset, so no claim would take it before the visibility timeout: it is kept
        in ``_claimed_while_held`` and handed out again when that thread is done (:meth:`_hand_back_claimed`)."""
        if self._finishing.is_set():
            return 0  # the drain already handed back what was queued: these stay pending, claimed later
        deadline = time.monotonic() + self.config.delivery_deadline
        decoded = []
        with self._in_flight_lock:
            for entry in self._decode(entries):
                if entry.entry_id not in self._held:
                    self._held.add(entry.entry_id)
                    decoded.append(entry)
                elif claimed:
                    self._claimed_while_held[entry.entry_id] = entry
        if coalesce:
            for entry in decoded:
                size = len(entry.batch.body)
                self._entry_bytes += (size - self._entry_bytes) * 0.25 if self._entry_bytes else size
        groups = pack(decoded) if coalesce else [[entry] for entry in decoded]
        for n, group in enumerate(groups):
            self._work.put(WorkItem(group, deadline, holds_slot=n < slots))
        return min(len(groups), slots)

    def _hand_back_claimed(self, entries: list[WorkEntry]) -> None:
        """Entries a claim took while their thread was finishing (see :meth:`_dispatch`), that thread now
        done: queued again if they are still pending at this consumer (the thread may have settled one
        after all, and a settled entry must not be sent twice)."""
        for entry in entries:
            pending = self.redis.xpending_range(self.keys.work, self.keys.group, min=entry.entry_id,
                                                max=entry.entry_id, count=1)
            owner = pending[0]["consumer"] if pending else None
            if owner not in (self.consumer, self.consumer.encode()):
                continue
            with self._in_flight_lock:
                if entry.entry_id in self._held:
                    continue
                self._held.add(entry.entry_id)
            self._work.put(WorkItem([entry], time.monotonic() + self.config.delivery_deadline, holds_slot=False))

    def _decode(self, entries: list[Any]) -> list[WorkEntry]:
        decoded = []
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
            decoded.append(entry)
        return decoded

    def _claim(self) -> None:
        """Take entries idle longer than the visibility timeout (their worker died or stalled).

        XAUTOCLAIM scans at most 10 x COUNT pending entries per call, and COUNT is this worker's idle
        threads: behind a long run of entries live peers are delivering, a page claims nothing. So
        a pass goes on past empty pages (a few of them), and the cursor is kept from one pass to
        the next, back to the start only when Redis says the scan wrapped (``0-0``): every idle
        entry is reached, however deep in the pending list."""
        min_idle = int(self.config.visibility_timeout * 1000)
        for page in range(_CLAIM_PAGES_PER_PASS):
            if self._draining.is_set():
                return
            slots = self._take_slots(0.0)
            if not slots:
                return  # a claim asked for "soon" stays asked for, until a thread is idle
            if page == 0:
                self._claim_soon = False
            used = 0
            try:
                reply: Any = self.redis.xautoclaim(self.keys.work, self.keys.group, self.consumer, min_idle,
                                                   start_id=self._claim_cursor, count=slots)
                cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                self._claim_cursor = cursor
                used = self._dispatch(reply[1], slots, claimed=True)
            finally:
                for _ in range(slots - used):
                    self._slots.release()
            if used:
                self.metrics.claimed.inc(used)
                if used == slots:
                    # Every idle thread got a claimed entry: more may be idle (e.g. all a paused or dead
                    # worker released); claim again as soon as threads free up, not a claim interval later.
                    self._claim_soon = True
            if cursor == "0-0":
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
