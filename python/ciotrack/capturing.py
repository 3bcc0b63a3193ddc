"""Capturing every Tracker a test constructs: the switch :class:`~ciotrack.tracker.Tracker` looks at.

:func:`capture_all` (a context manager; the ``ciotrack_capture`` pytest fixture opens one) and
``CIOTRACK_CAPTURE=1`` (the whole process) make every new Tracker record into memory instead of
sending. Users import these from :mod:`ciotrack.testing`; they live here, apart from
:class:`~ciotrack.testing.CaptureTracker`, because the tracker consults :func:`active_sink` at
construction and must not import the testing module (which builds on the tracker).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from ciotrack.destinations.capture import Capture, Operation

if TYPE_CHECKING:
    from ciotrack.tracker import CustomerId, Tracker

__all__ = ["CaptureSession", "CaptureSink", "CapturedReading", "TrackerCapture", "active_sink", "capture_all",
           "environment_capture"]


class CaptureSink(Protocol):
    """Where a Tracker constructed while capturing records (a :class:`CaptureSession`)."""

    def new_capture(self) -> Capture: ...

    def adopt(self, tracker: Tracker, capture: Capture) -> None: ...


_sinks: list[CaptureSink] = []
"""Active ``capture_all()`` sessions, innermost last (process-wide: trackers made on any thread count)."""


def active_sink() -> CaptureSink | None:
    """Where a Tracker constructed now should record (None: it sends for real)."""
    if _sinks:
        return _sinks[-1]
    if os.environ.get("CIOTRACK_CAPTURE", "").strip().lower() in ("1", "true", "yes", "on"):
        return environment_capture()
    return None


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
                and (anonymous_id is None or (op.get("identifiers") or {}).get("anonymous_id") == anonymous_id)]

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


@contextmanager
def capture_all() -> Iterator[CaptureSession]:
    """Inside the block, every ``Tracker`` constructed (on any thread) records into the yielded session
    instead of sending. Nests: the innermost session gets them."""
    session = CaptureSession()
    _sinks.append(session)
    try:
        yield session
    finally:
        _sinks.remove(session)


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
