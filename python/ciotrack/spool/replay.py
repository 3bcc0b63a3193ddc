"""Spool replay: what the pipeline hands over goes to disk, and comes back while the API is up.

What is written to the spool (``Config.spool_dir``), one record per hand-over, under the region
of the lane it came from:

* a batch whose retries ran out (Customer.io unreachable past ``retry_budget``/``max_retries``);
* operations a full lane refused under ``on_full="spool"`` (the core's overflow lists, taken at
  least every :data:`TICK` seconds by the spooler thread, and by the senders between batches);
* at close/exit: what is still queued, parked or stuck in a request when the deadline passes.

Replay. The spooler thread claims segments oldest first (``Spool.claim``: ``flock``'d, so two
processes never replay one file), pushes their operations back into their lanes with
``Core.requeue`` (the original bytes, hence the original event ids) while the lane is under half
full, and deletes a segment only once every operation it held is *finished*: delivered, finally
failed (reported to ``on_error``), or spooled again. A segment is therefore on disk for as long as
any of its operations is only in memory, and a crash at any point loses nothing that was spooled;
it may replay some operations twice, which Customer.io deduplicates by event id (identify and
device operations are idempotent).

Health. Replay runs while the destination is known to be up (the delivery loop's
:class:`~ciotrack.delivery.Health`: down once a batch ran out of retries or requests stopped getting
answers; batches are then spooled without a request, so an outage holds memory only for a moment).
While it is down or unknown (at start) and the spool holds something, ``destination.probe()`` (on a
short-lived thread) checks it with backoff, so an outage does not churn the spool through retry loops.

Order. Operations are requeued in spool order (segments by creation time, records and operations
in write order). Live calls made meanwhile go to the same lane and may be sent first.

Workspaces. Spooled operations carry no credentials: they are sent with the replaying tracker's.
Each ``site_id`` therefore gets its own subdirectory of ``spool_dir``. A record for a region this
tracker does not serve is written back for a tracker that does.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from ciotrack.errors import ConfigError
from ciotrack.lifecycle import block_exit_signals
from ciotrack.losses import Reason
from ciotrack.spool.dead_letter import PoisonWatch
from ciotrack.spool.segments import Segment, Spool, spool_directory

if TYPE_CHECKING:
    from ciotrack._core import Core, Lane
    from ciotrack.config import Config
    from ciotrack.delivery import Health
    from ciotrack.losses import Ledger

__all__ = ["SpoolHost", "SpoolReplay"]

log = logging.getLogger("ciotrack.spooling")
_monotonic = time.monotonic

TICK = 0.1
"""The spooler thread's period: overflow waits at most this long in memory before it is spooled."""
RESCAN = 30.0
"""While the API is up, look for segments other (dead) processes left behind this often."""
MAX_HELD = 4
"""Claimed segments whose operations are in the lanes, waiting to finish (bounds the locks held)."""
REQUEUE_CHUNK = 4096


class SpoolHost(Protocol):
    """What replay needs from the pipeline (:class:`ciotrack.pipeline.Pipeline`): its lanes, whether
    requeued operations finished, and the overflow hand-over. Nothing else of the pipeline is touched."""

    core: Core
    losses: Ledger

    @property
    def lane_count(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    def lane(self, index: int) -> Lane: ...

    def lane_for(self, region: str) -> int | None: ...

    def region_of(self, index: int) -> str: ...

    def finished(self, targets: Sequence[int]) -> bool: ...

    def idle(self) -> bool: ...

    def drain_overflow(self) -> None: ...


class _Claim:
    """A claimed segment: ``records`` still to requeue as ``(lane, ops)``; ``targets[lane]`` is the
    lane's ``pushed()`` after our last requeue into it (reached = every requeued op finished)."""

    __slots__ = ("segment", "records", "targets")

    def __init__(self, segment: Segment, records: collections.deque[tuple[int, list[bytes]]], lanes: int) -> None:
        self.segment = segment
        self.records = records
        self.targets = [0] * lanes


class SpoolReplay:
    """Owns a pipeline's :class:`~ciotrack.spool.Spool`: it is the pipeline's ``spool`` (``append``),
    and its thread requeues spooled operations while ``health`` is up."""

    def __init__(self, host: SpoolHost, config: Config, health: Health) -> None:
        assert config.spool_dir is not None
        self._host = host
        self._core = host.core
        self._health = health
        health.on_up = self._recovered
        self._spool_overflow = config.on_full == "spool"
        self.directory = spool_directory(config.spool_dir, config.site_id)
        try:
            self.spool = Spool(self.directory, max_bytes=config.spool_max_bytes, fsync=config.spool_fsync,
                               on_evict=self._evicted, on_deleted=self._deleted, on_refuse=self._refused)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"spool_dir {os.fspath(config.spool_dir)!r} cannot be used: {exc}") from None
        self.poison = PoisonWatch(self.directory, fsync=config.spool_fsync)
        self._half_bytes = config.max_queue_bytes // 2
        self._half_ops = max(1, config.max_queue_ops // 2)
        self._replay_lock = threading.Lock()  # claims and the round; never held while waiting
        self._claims: list[_Claim] = []
        self._round: Iterator[Segment] | None = None
        self._want_round = True
        self._next_scan = 0.0
        self._append_failed = False
        self._closing = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the SpoolHook ----------------------------------------------------------------------------

    def append(self, ops: Sequence[bytes], *, region: str = "us") -> int:
        """The ops written to the spool; the rest were reported (dead letters, a refusal)."""
        ops, dead = self.poison.split(ops)
        written = self._dead_letter(dead, region) if dead else 0
        if not ops:
            return written
        try:
            written += self.spool.append(ops, region=region)
        except BaseException:
            self._append_failed = True
            raise
        self._want_round = True  # replayed once the API is up (and the lane has room)
        self._health.expect_probe_soon()
        return written

    def pending(self) -> tuple[int, int]:
        """``(ops, bytes)`` spooled in this workspace's directory (every process's segments)."""
        return self.spool.pending()

    def _recovered(self) -> None:
        self._want_round = True
        self._wake.set()

    def _evicted(self, count: int) -> None:
        self._host.losses.drop(Reason.SPOOL_EVICTED, count)

    def _refused(self, count: int) -> None:
        self._host.losses.drop(Reason.SPOOL_FULL, count)

    def _deleted(self, count: int) -> None:
        self._host.losses.drop(Reason.SPOOL_DELETED, count)

    def _dead_letter(self, ops: list[bytes], region: str) -> int:
        """Set aside operations that kept failing on replay (see :mod:`ciotrack.spool.dead_letter`);
        the number spooled again instead (the dead-letter file could not be written)."""
        try:
            path = self.poison.write(ops, region)
        except (OSError, ValueError):
            log.warning("ciotrack: writing %d operation(s) to a dead-letter file failed; spooled again",
                        len(ops), exc_info=True)
            return self.spool.append(ops, region=region)
        self._host.losses.forget(ops)  # kept in a file, not delivered: the application may send them again
        self._host.losses.drop(Reason.DEAD_LETTER, len(ops), detail=f"in {path}")
        return 0

    # -- the spooler thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the spooler thread (idempotent; with the sender threads)."""
        if self._thread is not None or self._closing:
            return
        thread = threading.Thread(target=self._run, name="ciotrack-spooler", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # at interpreter shutdown: close() still spools, inline
            log.warning("ciotrack: cannot start the spooler thread (%s)", exc)
            return
        self._thread = thread

    def _run(self) -> None:
        block_exit_signals()
        host = self._host
        try:
            while not self._stop.is_set():
                if self._spool_overflow:  # what full lanes refused, each lane under its own region
                    host.drain_overflow()
                with self._replay_lock:
                    busy = self._step()
                    if host.draining and self._released():
                        return
                # While a segment waits for room in its lane, look again soon: the senders free it fast.
                replaying = bool(self._claims and self._claims[-1].records)
                self._wake.wait(0.005 if busy else 0.02 if replaying else TICK)
                self._wake.clear()
        except Exception:
            log.exception("ciotrack: the spooler thread crashed; the senders still spool overflow, and replay "
                          "resumes at the next start")

    def _step(self) -> bool:
        """One piece of replay work (replay lock held). True when more can be done right away."""
        self._settle_locked()
        if self._claims and self._claims[-1].records:
            return self._feed(self._claims[-1], low_water=True)
        if self._host.draining or len(self._claims) >= MAX_HELD or not self._may_claim():
            return False
        segment = self._next_segment()
        if segment is None:
            return False
        claim = self._open(segment)
        if claim is not None:
            self._feed(claim, low_water=True)
        return True

    def _may_claim(self) -> bool:
        health = self._health
        if health.up:
            return self._round is not None or self._want_round or _monotonic() >= self._next_scan
        self._round = None  # a fresh round after recovery also sees what was spooled meanwhile
        if not health.probe_due():
            return False
        if not self._pending():
            health.defer_probe(RESCAN)  # append() brings it forward
            return False
        health.probe_in_background()
        return False

    def _released(self) -> bool:
        """The Tracker was collected (the pipeline is draining): write back what was not requeued, wait
        for the rest to finish, then end the thread. True when done."""
        for claim in self._claims:
            self._write_back(claim)
        self._settle_locked()
        # The spool stays open: the exit handler may still close this pipeline and spool leftovers.
        return not self._claims and self._host.idle()

    def _pending(self) -> bool:
        try:
            return self.spool.pending()[1] > 0
        except (OSError, ValueError):
            return False

    # -- replay -----------------------------------------------------------------------------------

    def _next_segment(self) -> Segment | None:
        if self._round is None:
            self._want_round = False
            self._next_scan = _monotonic() + RESCAN
            self._round = self.spool.claim()
        segment = next(self._round, None)
        if segment is None:
            self._round = None
        return segment

    def _open(self, segment: Segment) -> _Claim | None:
        """Read ``segment`` into a claim; None when it could not be read (it is released, so kept for a
        later round: a claim without records would be settled at once, deleting the unread file)."""
        records: collections.deque[tuple[int, list[bytes]]] = collections.deque()
        for region, ops in segment.records():
            lane = self._host.lane_for(region)
            if lane is None:
                # Not a region this tracker serves: keep it for one that does.
                self.spool.append(ops, region=region)
                self._core.incr("spool_foreign", len(ops))
            elif ops:
                records.append((lane, ops))
        if segment.read_failed:
            self._finish(_Claim(segment, records, 0), delete=False)
            return None
        if segment.skipped_records:
            self._core.incr("spool_damaged_records", segment.skipped_records)
            # Ops in a record whose payload failed its checksum are gone: through the loss door, counted
            # from the header (its own CRC vouches for it). Damaged spans and torn tails hold no count
            # that can be trusted: their bytes are counted and logged by records().
            self._host.losses.drop(Reason.SPOOL_DAMAGED, segment.skipped_ops,
                                   detail=f"{segment.skipped_records} damaged record(s) in {segment.path.name}")
        if segment.damaged_bytes or segment.dropped_tail_bytes:
            self._core.incr("spool_damaged_bytes", segment.damaged_bytes + segment.dropped_tail_bytes)
        claim = _Claim(segment, records, self._host.lane_count)
        self._claims.append(claim)
        return claim

    def _feed(self, claim: _Claim, *, low_water: bool) -> bool:
        """Requeue ``claim``'s records in order; True when all went in. ``low_water``: only while the
        lane is under half full, so live calls keep the other half."""
        core = self._core
        host = self._host
        while claim.records:
            index, ops = claim.records[0]
            lane = host.lane(index)
            if low_water and (lane.queued_bytes() >= self._half_bytes or len(lane) >= self._half_ops):
                return False
            chunk = ops[:REQUEUE_CHUNK]
            fitted = core.requeue(index, chunk)
            if fitted:
                core.incr("replayed", fitted)
                self.poison.replayed(chunk[:fitted])
                claim.targets[index] = lane.pushed()
            if fitted < len(ops):
                claim.records[0] = (index, ops[fitted:])
                if fitted < len(chunk):
                    return False  # the lane is full
                continue
            claim.records.popleft()
        return True

    def _settle_locked(self) -> None:
        """Delete every claimed segment whose operations all finished."""
        if not self._claims:
            return
        finished = [c for c in self._claims if not c.records and self._host.finished(c.targets)]
        for claim in finished:
            self._claims.remove(claim)
            self._finish(claim, delete=True)

    def settle(self) -> None:
        with self._replay_lock:
            self._settle_locked()

    def _finish(self, claim: _Claim, *, delete: bool) -> None:
        try:
            if delete:
                claim.segment.done()
            else:
                claim.segment.release()
        except OSError:
            log.warning("ciotrack: finishing spool segment %s failed", claim.segment.path.name, exc_info=True)

    def _write_back(self, claim: _Claim) -> None:
        """Append the records not requeued yet to the spool again (a new segment)."""
        while claim.records:
            index, ops = claim.records[0]
            self.spool.append(ops, region=self._host.region_of(index))
            claim.records.popleft()

    def flush_inline(self, deliver: Callable[[list[int] | None, float | None], bool],
                     deadline: float | None) -> bool:
        """A flush delivering on the calling thread (``sync=True``, or no sender started yet): requeue
        spooled operations as far as the lanes take them, deliver (``deliver(None, deadline)`` counts
        its targets after the requeue), delete the finished segments; again while replay progresses."""
        while True:
            progressed = self._replay_inline()
            done = deliver(None, deadline)
            self.settle()
            if not done or not progressed:
                return done

    def _replay_inline(self) -> bool:
        """True when something was requeued."""
        if self._closing:
            return False
        with self._replay_lock:
            self._settle_locked()
            health = self._health
            if not health.up:
                if not health.probe_due() or not self._pending():
                    return False
                health.defer_probe()
                if not health.probe():
                    return False
            host = self._host
            before = sum(host.lane(i).pushed() for i in range(host.lane_count))
            self._fill_inline()
            return sum(host.lane(i).pushed() for i in range(host.lane_count)) != before

    def _fill_inline(self) -> None:
        for claim in self._claims:
            if not self._feed(claim, low_water=False):
                return
        while len(self._claims) < MAX_HELD:
            segment = self._next_segment()
            if segment is None:
                return
            opened = self._open(segment)
            if opened is not None and not self._feed(opened, low_water=False):
                return

    # -- close and fork ---------------------------------------------------------------------------

    def stop_replay(self, deadline: float | None = None) -> None:
        """Requeue nothing more (called first by ``Pipeline.close``): what replay holds is settled by
        :meth:`close` once the pipeline has delivered or spooled its lanes. The spooler thread is
        waited for up to 1 s, never past ``deadline`` (``time.monotonic()``)."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_time_left(deadline))

    def close(self, deadline: float | None = None) -> None:
        """Last step of ``Pipeline.close``, after every lane was delivered, spooled or dropped: write
        back what replay had not requeued, delete the segments it came from, close the spool.

        A segment is kept instead (replayed again later: duplicates, never a loss) when spooling
        failed during close, or the spooler thread did not stop (by ``deadline``, ``time.monotonic()``)."""
        self.stop_replay(deadline)
        stuck = self._thread is not None and self._thread.is_alive()
        with self._replay_lock:
            for claim in self._claims:
                keep = stuck or self._append_failed
                if not keep:
                    try:
                        self._write_back(claim)
                    except (OSError, ValueError):
                        log.warning("ciotrack: writing back a spool segment's remainder failed; segment kept",
                                    exc_info=True)
                        keep = True
                self._finish(claim, delete=not keep)
            self._claims.clear()
            self._round = None
        self.spool.close()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent keeps its segments, claims and thread. Close our copies of its
        descriptors without releasing its locks (``Spool`` does that on its first use in the child)."""
        self._closing = True
        self._claims = []
        self._round = None
        self.spool.close()


def _time_left(deadline: float | None, most: float = 1.0) -> float:
    """How long a close step may wait for the spooler thread: ``most``, cut to what is left of the
    close deadline (a stuck spooler only keeps its segments: replayed again, never lost)."""
    return most if deadline is None else max(0.0, min(most, deadline - _monotonic()))
