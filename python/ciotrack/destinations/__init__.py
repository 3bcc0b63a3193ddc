"""Destinations: the public seam between the delivery loop and where batches go.

:class:`Destination` (``send(body) -> Outcome``, ``probe() -> bool``, ``close()``) and
:class:`Outcome` are the contract; see :mod:`ciotrack.destinations.base` for a ten-line example.
"""

from ciotrack.destinations.base import Destination, Outcome, OutcomeKind

__all__ = ["Destination", "Outcome", "OutcomeKind"]
