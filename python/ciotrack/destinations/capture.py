"""An in-memory destination: every batch is accepted and its decoded operations kept, in order.

:class:`Capture` is a destination *factory* (``region -> Destination``): pass it as
``Tracker(destination=capture)`` and each region's lane gets a :class:`CaptureDestination` writing
into the one capture, tagged with its region. :class:`ciotrack.testing.CaptureTracker` is a Tracker
built that way, with read helpers on top.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ciotrack.destinations.base import Outcome

__all__ = ["Capture", "CaptureDestination", "Operation"]

Operation = dict[str, Any]


class Capture:
    """Captured ``(region, operation)`` pairs of every destination it made."""

    def __init__(self) -> None:
        self._captured: list[tuple[str, Operation]] = []
        self._lock = threading.Lock()

    def __call__(self, region: str) -> CaptureDestination:
        return CaptureDestination(self, region)

    def __len__(self) -> int:
        return len(self._captured)

    def record(self, region: str, ops: list[Operation]) -> None:
        with self._lock:
            self._captured.extend((region, op) for op in ops)

    def snapshot(self) -> list[tuple[str, Operation]]:
        with self._lock:
            return list(self._captured)

    def clear(self) -> None:
        with self._lock:
            self._captured.clear()


class CaptureDestination:
    """Accepts every batch and records its decoded operations under ``name`` (the region)."""

    def __init__(self, capture: Capture, name: str) -> None:
        self.name = name
        self._capture = capture

    def __repr__(self) -> str:
        return f"CaptureDestination(region={self.name!r})"

    def send(self, body: bytes) -> Outcome:
        self._capture.record(self.name, json.loads(body)["batch"])
        return Outcome.delivered()

    def probe(self) -> bool:
        return True

    def close(self) -> None:
        pass
