"""The glue between the delivery pipeline and the disk spool (issue 5: never lose an event).

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

Health. Replay runs while the API is known to be up. It is down once a batch ran out of retries, or
:data:`DOWN_AFTER` requests in a row got no answer with nothing delivered for :data:`DOWN_QUIET` s;
batches are then spooled without a request, so an outage holds memory only for a moment. Any
delivered batch marks it up again at once. While it is down or unknown (at start) and the spool
holds something, a probe (``GET /api/v1/accounts/region``, in a short-lived thread) checks it with
backoff from :data:`PROBE_MIN` to :data:`PROBE_MAX` seconds, so an outage does not churn the spool
through retry loops.

Order. Operations are requeued in spool order (segments by creation time, records and operations
in write order). Live calls made meanwhile go to the same lane and may be sent first.

Workspaces. Spooled operations carry no credentials: they are sent with the replaying tracker's.
Each ``site_id`` therefore gets its own subdirectory of ``spool_dir``. A record for a region this
tracker does not serve is written back for a tracker that does.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import requests

from ciotrack.errors import ConfigError
from ciotrack.lifecycle import block_exit_signals
from ciotrack.spool import Segment, Spool
from ciotrack.transport import make_session

if TYPE_CHECKING:
    from ciotrack._core import Batch
    from ciotrack.sender import Pipeline

__all__ = ["SpoolBridge", "spool_directory"]

log = logging.getLogger("ciotrack.spooling")
_monotonic = time.monotonic

TICK = 0.1
"""The spooler thread's period: overflow waits at most this long in memory before it is spooled."""
PROBE_MIN = 0.5
PROBE_MAX = 30.0
RESCAN = 30.0
"""While the API is up, look for segments other (dead) processes left behind this often."""
MAX_HELD = 4
"""Claimed segments whose operations are in the lanes, waiting to finish (bounds the locks held)."""
REQUEUE_CHUNK = 4096
DOWN_AFTER = 3
DOWN_QUIET = 2.0
"""The API counts as down after :data:`DOWN_AFTER` requests in a row got no answer at all (refused,
reset, timed out) and nothing was delivered for :data:`DOWN_QUIET` seconds: batches then go to the
spool at once instead of each waiting out a retry budget in memory (where a SIGKILL during an outage
would lose them). The quiet period keeps a flaky but working API (resets between deliveries) up."""

_UNKNOWN, _UP, _DOWN = 0, 1, 2
_SAFE_SITE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def spool_directory(spool_dir: str | os.PathLike[str], site_id: str) -> pathlib.Path:
    """The workspace's own subdirectory: replayed operations are sent with the replaying tracker's
    credentials, so one ``spool_dir`` shared by two workspaces must never mix their records."""
    name = site_id if _SAFE_SITE.fullmatch(site_id) and not site_id.startswith(".") else (
        hashlib.sha256(site_id.encode("utf-8", "surrogatepass")).hexdigest()[:24])
    return pathlib.Path(spool_dir) / f"site-{name}"


class _Claim:
    """A claimed segment: ``records`` still to requeue as ``(lane, ops)``; ``targets[lane]`` is the
    lane's ``pushed()`` after our last requeue into it (reached = every requeued op finished)."""

    __slots__ = ("segment", "records", "targets")

    def __init__(self, segment: Segment, records: collections.deque[tuple[int, list[bytes]]], lanes: int) -> None:
        self.segment = segment
        self.records = records
        self.targets = [0] * lanes


class SpoolBridge:
    """Owns the pipeline's :class:`~ciotrack.spool.Spool`; is the pipeline's ``spool`` (SpoolHook)."""

    def __init__(self, pipeline: Pipeline) -> None:
        config = pipeline.config
        assert config.spool_dir is not None
        self._pipeline = pipeline
        self._core = pipeline.core
        self.directory = spool_directory(config.spool_dir, config.site_id)
        try:
            self.spool = Spool(self.directory, max_bytes=config.spool_max_bytes, fsync=config.spool_fsync,
                               on_evict=self._evicted, on_deleted=self._deleted)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"spool_dir {os.fspath(config.spool_dir)!r} cannot be used: {exc}") from None
        self._half_bytes = config.max_queue_bytes // 2
        self._half_ops = max(1, config.max_queue_ops // 2)
        self._replay_lock = threading.Lock()  # claims and the round; never held while waiting
        self._claims: list[_Claim] = []
        self._round: Iterator[Segment] | None = None
        self._want_round = True
        self._next_scan = 0.0
        self._health = _UNKNOWN
        self._next_probe = 0.0
        self._probe_delay = PROBE_MIN
        self._probing = False
        self._no_answer = 0
        self._last_delivery = float("-inf")
        self._probe_session: requests.Session | None = None
        self._copies: set[int] = set()  # id() of in-flight batches spooled at close (their thread was stuck)
        self._append_failed = False
        self._closing = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        pipeline.spool = self

    # -- the SpoolHook and the sender's notifications ---------------------------------------------

    def append(self, ops: Sequence[bytes], *, region: str = "us") -> None:
        try:
            self.spool.append(ops, region=region)
        except BaseException:
            self._append_failed = True
            raise
        self._want_round = True  # replayed once the API is up (and the lane has room)
        if self._health != _UP:
            self._next_probe = min(self._next_probe, _monotonic() + self._probe_delay)

    def delivered(self) -> None:
        """A batch was delivered: the API is up (cheap; called for every delivered batch)."""
        self._no_answer = 0
        self._last_delivery = _monotonic()
        if self._health != _UP:
            self._health = _UP
            self._probe_delay = PROBE_MIN
            self._want_round = True
            self._wake.set()

    def failed_attempt(self, *, answered: bool) -> None:
        """A request to be retried. Any HTTP answer (429, 5xx) proves the API reachable; requests with
        no answer are counted (without a lock: an approximate count is enough)."""
        if answered:
            self._no_answer = 0
            return
        self._no_answer += 1
        if self._no_answer >= DOWN_AFTER and _monotonic() - self._last_delivery >= DOWN_QUIET:
            self.unreachable()

    def unreachable(self) -> None:
        """A batch exhausted its retries: stop replaying until a delivery or a probe succeeds."""
        if self._health != _DOWN:
            self._health = _DOWN
            self._next_probe = _monotonic() + self._probe_delay

    @property
    def api_down(self) -> bool:
        return self._health == _DOWN

    def copied(self, batch: Batch) -> bool:
        """True for a batch :meth:`spool_stuck` already spooled: its thread must not report it."""
        return id(batch) in self._copies

    def _evicted(self, count: int) -> None:
        self._pipeline.drop("spool_evicted", count)

    def _deleted(self, count: int) -> None:
        self._pipeline.drop("spool_deleted", count)

    # -- overflow ---------------------------------------------------------------------------------

    def drain_overflow(self) -> None:
        """Spool what full lanes refused (``on_full="spool"``), each lane under its own region."""
        if self._pipeline.config.on_full == "spool":
            self._pipeline.drain_overflow()

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
        pipeline = self._pipeline
        try:
            while not self._stop.is_set():
                self.drain_overflow()
                with self._replay_lock:
                    busy = self._step()
                    if pipeline._draining and self._released():
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
        if self._pipeline._draining or len(self._claims) >= MAX_HELD or not self._may_claim():
            return False
        segment = self._next_segment()
        if segment is None:
            return False
        self._feed(self._open(segment), low_water=True)
        return True

    def _may_claim(self) -> bool:
        now = _monotonic()
        if self._health == _UP:
            return self._round is not None or self._want_round or now >= self._next_scan
        self._round = None  # a fresh round after recovery also sees what was spooled meanwhile
        if self._probing or now < self._next_probe:
            return False
        if not self._pending():
            self._next_probe = now + RESCAN  # append() brings it forward
            return False
        self._next_probe = now + self._probe_delay
        self._probing = True
        try:
            threading.Thread(target=self._probe_thread, name="ciotrack-spool-probe", daemon=True).start()
        except RuntimeError:  # interpreter shutdown
            self._probing = False
        return False

    def _released(self) -> bool:
        """The Tracker was collected (``Pipeline.release``): write back what was not requeued, wait
        for the rest to finish, then close the spool and end the thread. True when done."""
        for claim in self._claims:
            self._write_back(claim)
        self._settle_locked()
        # The spool stays open: the exit handler may still close this pipeline and spool leftovers.
        return not self._claims and self._pipeline._idle()

    # -- probing ----------------------------------------------------------------------------------

    def _probe_thread(self) -> None:
        block_exit_signals()
        try:
            up = self._probe(None)
        finally:
            self._probing = False
        if up:
            self.delivered()

    def _probe(self, deadline: float | None) -> bool:
        """One ``GET /api/v1/accounts/region``: any answer but 408/429/5xx means reachable."""
        pipeline = self._pipeline
        config = pipeline.config
        if self._probe_session is None:
            self._probe_session = make_session(1, user_agent_suffix=config.user_agent)
        connect, read = config.timeout if isinstance(config.timeout, tuple) else (config.timeout, config.timeout)
        cap = 5.0 if deadline is None else max(0.05, deadline - _monotonic())
        route = pipeline.routes[0]
        url = config.endpoint_for(route.region or "us") + "/api/v1/accounts/region"
        try:
            response = self._probe_session.get(url, auth=(config.site_id, config.api_key),
                                               timeout=(min(connect, cap), min(read, cap)),
                                               proxies=dict(config.proxies) if config.proxies else None,
                                               verify=config.verify)
            up = response.status_code < 500 and response.status_code not in (408, 429)
        except requests.exceptions.RequestException:
            up = False
        if not up:
            self._health = _DOWN
            self._probe_delay = min(PROBE_MAX, self._probe_delay * 2)
        return up

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

    def _lane_for(self, region: str) -> int | None:
        routes = self._pipeline.routes
        for route in routes:
            if route.region == region or route.route == region:
                return route.index
        # Written before an "auto" route was resolved: the workspace's default region is lane 0.
        return 0 if region == "auto" else None

    def _region_of(self, lane: int) -> str:
        route = self._pipeline.routes[lane]
        return route.region or route.route

    def _open(self, segment: Segment) -> _Claim:
        records: collections.deque[tuple[int, list[bytes]]] = collections.deque()
        for region, ops in segment.records():
            lane = self._lane_for(region)
            if lane is None:
                # Not a region this tracker serves: keep it for one that does.
                self.spool.append(ops, region=region)
                self._core.incr("spool_foreign", len(ops))
            elif ops:
                records.append((lane, ops))
        if segment.skipped_records:
            self._core.incr("spool_damaged_records", segment.skipped_records)
        claim = _Claim(segment, records, len(self._pipeline.routes))
        self._claims.append(claim)
        return claim

    def _feed(self, claim: _Claim, *, low_water: bool) -> bool:
        """Requeue ``claim``'s records in order; True when all went in. ``low_water``: only while the
        lane is under half full, so live calls keep the other half."""
        core = self._core
        routes = self._pipeline.routes
        while claim.records:
            index, ops = claim.records[0]
            lane = routes[index].lane
            if low_water and (lane.queued_bytes() >= self._half_bytes or len(lane) >= self._half_ops):
                return False
            chunk = ops[:REQUEUE_CHUNK]
            fitted = core.requeue(index, chunk)
            if fitted:
                core.incr("replayed", fitted)
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
        pipeline = self._pipeline
        with pipeline._cv:
            finished = [c for c in self._claims if not c.records and pipeline._done(c.targets)]
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
            self.spool.append(ops, region=self._region_of(index))
            claim.records.popleft()

    def flush_inline(self, deliver: Callable[[list[int] | None, float | None], bool],
                     deadline: float | None) -> bool:
        """A flush delivering on the calling thread (``sync=True``, or no sender started yet): requeue
        spooled operations as far as the lanes take them, deliver (``deliver(None, deadline)`` counts
        its targets after the requeue), delete the finished segments; again while replay progresses."""
        while True:
            progressed = self._replay_inline(deadline)
            done = deliver(None, deadline)
            self.settle()
            if not done or not progressed:
                return done

    def _replay_inline(self, deadline: float | None) -> bool:
        """True when something was requeued."""
        if self._closing:
            return False
        with self._replay_lock:
            self._settle_locked()
            if self._health != _UP:
                now = _monotonic()
                if now < self._next_probe or not self._pending():
                    return False
                self._next_probe = now + self._probe_delay
                if not self._probe(deadline):
                    return False
                self._health = _UP
            before = sum(route.lane.pushed() for route in self._pipeline.routes)
            self._fill_inline()
            return sum(route.lane.pushed() for route in self._pipeline.routes) != before

    def _fill_inline(self) -> None:
        for claim in self._claims:
            if not self._feed(claim, low_water=False):
                return
        while len(self._claims) < MAX_HELD:
            segment = self._next_segment()
            if segment is None or not self._feed(self._open(segment), low_water=False):
                return

    # -- close and fork ---------------------------------------------------------------------------

    def stop_replay(self, timeout: float = 1.0) -> None:
        """Requeue nothing more (called first by ``Pipeline.close``): what replay holds is settled by
        :meth:`close` once the pipeline has delivered or spooled its lanes."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def spool_stuck(self) -> None:
        """After ``close()`` joined the senders: a batch still in flight belongs to a thread stuck in a
        request past the deadline. Spool a copy (should that request succeed after all, the replay only
        repeats event ids, which Customer.io deduplicates) and remember it, so that thread's own
        give-up does not report it failed."""
        pipeline = self._pipeline
        if threading.current_thread() in pipeline._threads:
            return  # close() from a hook: the batch in flight is this very thread's, being finished
        for route in pipeline.routes:
            with pipeline._cv:
                stuck: list[Batch] = list(route.in_flight.values())
            for batch in stuck:
                if id(batch) not in self._copies and pipeline._to_spool(route, batch.ops()):
                    self._copies.add(id(batch))

    def close(self) -> None:
        """Last step of ``Pipeline.close``, after every lane was delivered, spooled or dropped: write
        back what replay had not requeued, delete the segments it came from, close the spool.

        A segment is kept instead (replayed again later: duplicates, never a loss) when spooling
        failed during close, or the spooler thread did not stop."""
        self.stop_replay()
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
        if self._probe_session is not None:
            self._probe_session.close()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent keeps its segments, claims and thread. Close our copies of its
        descriptors without releasing its locks (``Spool`` does that on its first use in the child)."""
        self._closing = True
        self._claims = []
        self._round = None
        self.spool.close()
