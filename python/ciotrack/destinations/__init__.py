"""Destinations: the public seam between the delivery loop and where batches go.

:class:`Destination` (``send(body) -> Outcome``, ``probe() -> bool``, ``close()``) and
:class:`Outcome` are the contract; see :mod:`ciotrack.destinations.base` for a ten-line example.
Implementations: :class:`~ciotrack.destinations.track_v2.TrackV2Destination` (Customer.io's Track API
v2, the default) and :class:`~ciotrack.destinations.capture.Capture` (in memory, for tests). Pass
one (or a factory ``region -> Destination``) as ``Tracker(destination=...)``.

:func:`time_left` is for a destination that makes its own requests: the seconds left of the caller's
deadline when ``send`` runs inside a ``sync=True`` tracker's ``flush(timeout)``/``close(timeout)``
(cap the request's timeout with it), None on the sender threads.
"""

from collections.abc import Callable

from ciotrack.destinations.base import Destination, Outcome, OutcomeKind
from ciotrack.destinations.http import time_left

__all__ = ["Destination", "DestinationFactory", "Outcome", "OutcomeKind", "time_left"]

DestinationFactory = Callable[[str], Destination]
"""Makes the destination of one region (``"us"``, ``"eu"``; ``"auto"`` before the region is known)."""
