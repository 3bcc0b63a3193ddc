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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ciotrack
from ciotrack.config import Config
from ciotrack.testing import CaptureTracker

__all__ = ["ciotrack_capture"]


@pytest.fixture
def ciotrack_capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[CaptureTracker]:
    """A CaptureTracker installed as ciotrack's default tracker for one test."""
    capture = CaptureTracker()

    def init(site_id: str | None = None, api_key: str | None = None, **options: Any) -> CaptureTracker:
        # Validate like the real init (unknown or bad options raise ConfigError), but keep the capture.
        Config.from_env({}, site_id=site_id or "capture", api_key=api_key or "capture", **options)
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
