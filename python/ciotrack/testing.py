"""Testing helpers for code that uses ciotrack: record operations in memory instead of sending them.

    from ciotrack.testing import CaptureTracker

    def test_checkout_is_tracked():
        captured = CaptureTracker()
        shop.checkout(captured, cart)                # code under test calls captured.track(...)
        [event] = captured.events(name="checkout")
        assert event["identifiers"] == {"id": "42"} and event["attributes"]["total"] == 12.5

With pytest, the ``ciotrack_capture`` fixture (:mod:`ciotrack.pytest_plugin`) puts a CaptureTracker in
place of the module-level default tracker, so ``ciotrack.track(...)`` and friends are captured too.

A :class:`CaptureTracker` *is* a :class:`~ciotrack.Tracker` (same methods, same routing, and the same
native encoder, so bad input raises exactly what it would raise in production) whose batches go to an
in-memory destination instead of Customer.io: no sender thread (it runs in ``sync`` mode), no socket,
no credentials. Captured operations are the decoded Track API v2 operations, exactly as they would be
sent (an event's data is under ``"attributes"``, ids are strings, ``id``/``timestamp`` are filled in).
Deduplication applies as in production (an identical identify within ``dedup_ttl`` is skipped); pass
``dedup_ttl=0`` to record every call.

Code that builds its own ``Tracker(site_id, api_key)`` (an app factory, a module-level client) is
captured too inside :func:`capture_all` (the ``ciotrack_capture`` fixture opens one for its test), or
in a process started with ``CIOTRACK_CAPTURE=1``: every Tracker constructed then records into memory
and sends nothing (no socket, no sender thread, nothing to wait for at exit)::

    from ciotrack.testing import capture_all

    def test_app_tracks_signups():
        with capture_all() as captured:
            app = create_app()                       # does Tracker(site_id, api_key) somewhere
            app.test_client().post("/signup", json={"id": "42"})
        [event] = captured.events(name="signed_up")  # or captured.of(app.tracker).events(...)

A tracker made inside stays a capture after the block (code holding it keeps working, still sending
nothing). ``CIOTRACK_DISABLED=1`` is the blunter switch: trackers validate calls and drop them, and
nothing can be read back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Unpack

from ciotrack import tracker as _tracker_module
from ciotrack.config import Config
from ciotrack.destinations.capture import Capture, Operation
from ciotrack.options import TrackerOptions
from ciotrack.tracker import CustomerId, Tracker

__all__ = ["CaptureFixture", "CaptureSession", "CaptureTracker", "TrackerCapture", "capture_all", "environment_capture"]


class CapturedReading:
    """The read helpers, over whatever ``_snapshot()`` returns (one tracker's capture, or a session's)."""

    def _snapshot(self) -> list[tuple[str, Operation]]:
        raise NotImplementedError

    @property
    def operations(self) -> list[Operation]:
        """Every captured operation, in call order (per region, when calls go to several regions)."""
        return [op for _, op in self._snapshot()]

    def operations_for(self, region: str) -> list[Operation]:
        """The operations routed to ``region`` (``"us"``/``"eu"``)."""
        return [op for op_region, op in self._snapshot() if op_region == region]

    def events(self, name: str | None = None, *, customer_id: CustomerId | None = None,
               anonymous_id: str | None = None, action: str | None = "event") -> list[Operation]:
        """Events, optionally only those called ``name``, of one person or visitor. ``action``:
        ``"event"`` (``track``/``track_anonymous``), ``"page"``, ``"screen"``, or None for all three."""
        actions = ("event", "page", "screen") if action is None else (action,)
        return [op for op in self._matching(actions, customer_id)
                if (name is None or op.get("name") == name)
                and (anonymous_id is None or op.get("anonymous_id") == anonymous_id)]

    def identifies(self, customer_id: CustomerId | None = None) -> list[Operation]:
        """Identify operations (all, or one person's)."""
        return list(self._matching(("identify",), customer_id))

    def by_action(self, action: str, customer_id: CustomerId | None = None) -> list[Operation]:
        """Operations with this ``action`` (``delete``, ``add_device``, ``merge``, ``suppress``, ...)."""
        return list(self._matching((action,), customer_id))

    def _matching(self, actions: tuple[str, ...], customer_id: CustomerId | None) -> Iterator[Operation]:
        wanted = None if customer_id is None else str(customer_id)
        for op in self.operations:
            if op.get("action") not in actions:
                continue
            if wanted is not None:
                identifiers = op.get("identifiers")
                if not isinstance(identifiers, dict) or str(identifiers.get("id")) != wanted:
                    continue
            yield op


class CaptureTracker(CapturedReading, Tracker):
    """A Tracker that records instead of sending: ``Tracker(destination=Capture(), sync=True)`` plus
    read helpers. Options are the Tracker's (``region_for``, ``dedup_ttl``, ``on_drop``, ...); delivery
    options are ignored and no environment variable is read.
    """

    _records_itself = True

    def __init__(self, site_id: str | None = None, api_key: str | None = None, *, region: str | None = None,
                 config: Config | None = None, **options: Unpack[TrackerOptions]) -> None:
        self.capture = Capture()
        """The destination factory every region's lane delivers into."""
        if config is None:
            # environ={}: a test must not depend on (or pick up credentials from) CIOTRACK_* variables.
            config = Config.from_env({}, site_id=site_id or "capture", api_key=api_key or "capture",
                                     region=region, **options)
        elif site_id is not None or api_key is not None or region is not None or options:
            config = config.replace(**options, **{k: v for k, v in
                                                  (("site_id", site_id), ("api_key", api_key), ("region", region))
                                                  if v is not None})
        # sync: no thread, delivery happens on read; no rate limit: reading never waits for a token.
        # Every lane delivers into the capture (an "auto" one too: an injected destination is never
        # looked up over the network).
        config = config.replace(sync=True, disabled=False, rate_limit=0.0, limiter=None, destination=self.capture)
        super().__init__(config=config)

    def __enter__(self) -> CaptureTracker:
        return self

    def __repr__(self) -> str:
        return f"<ciotrack.testing.CaptureTracker region={self.config.region!r} captured={len(self.capture)}>"

    def _snapshot(self) -> list[tuple[str, Operation]]:
        # Deliver what is queued first, so a read right after a call sees it.
        self.flush()
        return self.capture.snapshot()

    def clear(self) -> None:
        """Forget everything captured so far (queued operations included)."""
        self.flush()
        self.capture.clear()


class TrackerCapture(CapturedReading):
    """What one Tracker made inside :func:`capture_all` recorded (``tracker`` is that Tracker)."""

    def __init__(self, tracker: Tracker, capture: Capture) -> None:
        self.tracker = tracker
        self.capture = capture

    def __repr__(self) -> str:
        return f"<TrackerCapture of {self.tracker!r}: {len(self.capture)} operation(s)>"

    def _snapshot(self) -> list[tuple[str, Operation]]:
        if not self.tracker.closed:  # close() delivered everything already
            self.tracker.flush()
        return self.capture.snapshot()


class CaptureSession(CapturedReading):
    """Every Tracker constructed while this session is active, as a :class:`TrackerCapture` each.

    The read helpers (``operations``, ``events(...)``, ...) read every tracker's operations, tracker by
    tracker in construction order; :meth:`of` reads one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trackers: list[TrackerCapture] = []

    def __repr__(self) -> str:
        return f"<CaptureSession: {len(self._trackers)} tracker(s)>"

    # the tracker module's CaptureSink protocol
    def new_capture(self) -> Capture:
        return Capture()

    def adopt(self, tracker: Tracker, capture: Capture) -> None:
        with self._lock:
            self._trackers.append(TrackerCapture(tracker, capture))

    @property
    def trackers(self) -> list[TrackerCapture]:
        """One entry per Tracker constructed in the session, in construction order."""
        with self._lock:
            return list(self._trackers)

    def of(self, tracker: Tracker) -> TrackerCapture:
        """What ``tracker`` captured (LookupError: it was not made in this session)."""
        for entry in self.trackers:
            if entry.tracker is tracker:
                return entry
        raise LookupError(f"{tracker!r} was not constructed inside this capture session")

    def _snapshot(self) -> list[tuple[str, Operation]]:
        return [pair for entry in self.trackers for pair in entry._snapshot()]

    def clear(self) -> None:
        """Forget what every tracker captured so far."""
        for entry in self.trackers:
            entry._snapshot()
            entry.capture.clear()


class CaptureFixture(CaptureTracker):
    """What the ``ciotrack_capture`` pytest fixture yields: the CaptureTracker standing in for the
    module-level default tracker, plus ``session``, the :class:`CaptureSession` of every other Tracker
    the test constructs (``trackers``, ``of(tracker)``; ``all_operations`` reads both)."""

    def __init__(self, session: CaptureSession) -> None:
        super().__init__()
        self.session = session

    @property
    def trackers(self) -> list[TrackerCapture]:
        """Every Tracker the code under test constructed (the default stand-in excluded)."""
        return self.session.trackers

    def of(self, tracker: Tracker) -> CapturedReading:
        """What ``tracker`` captured (this fixture itself included)."""
        return self if tracker is self else self.session.of(tracker)

    @property
    def all_operations(self) -> list[Operation]:
        """The default stand-in's operations, then every other tracker's."""
        return self.operations + self.session.operations


@contextmanager
def capture_all() -> Iterator[CaptureSession]:
    """Inside the block, every ``Tracker`` constructed (on any thread) records into the yielded session
    instead of sending. Nests: the innermost session gets them."""
    session = CaptureSession()
    sinks = _tracker_module._capture_sinks
    sinks.append(session)
    try:
        yield session
    finally:
        sinks.remove(session)


_environment_session: CaptureSession | None = None
_environment_lock = threading.Lock()


def environment_capture() -> CaptureSession:
    """The process-wide session of ``CIOTRACK_CAPTURE=1`` (every Tracker made outside a
    :func:`capture_all` block records here)."""
    global _environment_session
    with _environment_lock:
        if _environment_session is None:
            _environment_session = CaptureSession()
        return _environment_session
