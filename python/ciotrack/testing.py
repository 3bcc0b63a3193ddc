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

from typing import Unpack

from ciotrack.capturing import (
    CapturedReading,
    CaptureSession,
    TrackerCapture,
    capture_all,
    environment_capture,
)
from ciotrack.config import Config
from ciotrack.destinations.capture import Capture, Operation
from ciotrack.options import TrackerOptions
from ciotrack.tracker import Tracker

__all__ = ["CaptureFixture", "CaptureSession", "CaptureTracker", "CapturedReading", "TrackerCapture", "capture_all",
           "environment_capture"]


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
