"""pytest plugin (entry point ``pytest11: ciotrack``): the ``ciotrack_capture`` fixture.

    def test_signup_tracks_an_event(ciotrack_capture):
        app.signup("42")                              # calls ciotrack.track("42", "signed_up", ...)
        [event] = ciotrack_capture.events(name="signed_up")
        assert event["identifiers"] == {"id": "42"}

For the test's duration the module-level default tracker (``ciotrack.track``, ``ciotrack.identify``,
``ciotrack.get_tracker()``, ...) is a :class:`~ciotrack.testing.CaptureTracker`; nothing is sent.
``ciotrack.init(...)`` called by the code under test checks its options and returns the capture
instead of making a real tracker, and ``ciotrack.close()`` flushes it but keeps it in place, so an
app's startup and shutdown code can run inside the test. Afterwards the previous default tracker (or
none) is back. Code that did ``from ciotrack import init`` before the test holds the real ``init``:
call it as ``ciotrack.init`` to get the swap.

Every other ``Tracker`` constructed during the test (an app's own ``Tracker(site_id, api_key)``) is a
capture too (:func:`ciotrack.testing.capture_all`): it sends nothing, and the test reads it with
``ciotrack_capture.of(app.tracker).events(...)`` or ``ciotrack_capture.trackers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Unpack

import pytest

import ciotrack
from ciotrack.config import Config
from ciotrack.options import TrackerOptions
from ciotrack.testing import CaptureFixture, CaptureTracker, capture_all

__all__ = ["ciotrack_capture"]


@pytest.fixture
def ciotrack_capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[CaptureFixture]:
    """A CaptureTracker installed as ciotrack's default tracker for one test; every other Tracker the
    test constructs records too (``ciotrack_capture.of(tracker)``, ``ciotrack_capture.trackers``)."""
    with capture_all() as session:
        yield from _installed(monkeypatch, CaptureFixture(session))


def _installed(monkeypatch: pytest.MonkeyPatch, capture: CaptureFixture) -> Iterator[CaptureFixture]:
    def init(site_id: str | None = None, api_key: str | None = None, *, region: str | None = None,
             endpoint: str | None = None, **options: Unpack[TrackerOptions]) -> CaptureTracker:
        # Validate like the real init (unknown or bad options raise ConfigError), but keep the capture.
        Config.from_env({}, site_id=site_id or "capture", api_key=api_key or "capture", region=region,
                        endpoint=endpoint, **options)
        return capture

    def close(timeout: float | None = None) -> None:
        capture.flush(timeout)

    # monkeypatch restores all three at teardown, even when the test fails.
    monkeypatch.setattr(ciotrack, "_default", capture)
    monkeypatch.setattr(ciotrack, "init", init)
    monkeypatch.setattr(ciotrack, "close", close)
    try:
        yield capture
    finally:
        capture.close()
