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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ciotrack.config import Config
from ciotrack.destinations.capture import Capture, Operation
from ciotrack.tracker import CustomerId, Tracker

__all__ = ["CaptureTracker"]


class CaptureTracker(Tracker):
    """A Tracker that records instead of sending: ``Tracker(destination=Capture(), sync=True)`` plus
    read helpers. Options are the Tracker's (``region_for``, ``dedup_ttl``, ``on_drop``, ...); delivery
    options are ignored and no environment variable is read.
    """

    def __init__(self, site_id: str | None = None, api_key: str | None = None, *, region: str | None = None,
                 config: Config | None = None, **options: Any) -> None:
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

    # -- reading ----------------------------------------------------------------------------------

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

    def clear(self) -> None:
        """Forget everything captured so far (queued operations included)."""
        self.flush()
        self.capture.clear()
