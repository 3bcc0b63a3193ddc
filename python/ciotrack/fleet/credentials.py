"""A refused API key is the worker's failure, not an entry's.

Customer.io answers 401 (wrong, rotated or revoked key) or 403 (the key may not use this workspace or
API) whatever the batch holds. Counted as a try, such an answer dead-lettered every entry of the stream
after ``--max-deliveries`` of them: one pod with a stale Secret during a rollout moved all traffic to
the dead-letter stream. So these answers are no try: the entries are handed back untried (a peer with a
good key takes them at once), and this worker pauses its own delivery, with a growing pause, until an
answer shows its key works again. ``/readyz`` says not ready meanwhile, and each pause is logged once,
naming the cause and the site id, never the key.

The pause is this worker's own, not the fleet's shared ``paused_until``: a peer whose key works must
go on delivering. Answers about one entry (400, a 413 that cannot be split, 422) still count.
"""

from __future__ import annotations

import logging
import threading
import time

from ciotrack.fleet.metrics import Probes

__all__ = ["REFUSED_CREDENTIALS", "CredentialsPause"]

log = logging.getLogger("ciotrack.fleet")

REFUSED_CREDENTIALS = frozenset({401, 403})
"""Statuses that are about the worker's credentials, whatever the entry."""

FIRST_PAUSE = 5.0
MAX_PAUSE = 60.0


class CredentialsPause:
    """This worker's pause after a refused key (see the module docstring). Thread-safe."""

    def __init__(self, site_id: str, probes: Probes, first: float = FIRST_PAUSE, longest: float = MAX_PAUSE) -> None:
        self._site_id = site_id
        self._probes = probes
        self._first = first
        self._longest = longest
        self._next = first
        self._until = 0.0
        self._refused = False
        self._lock = threading.Lock()

    def refused(self, status: int | None) -> None:
        """An answer refused the key: pause (longer each time in a row), unless already paused."""
        with self._lock:
            now = time.monotonic()
            if now < self._until:
                return  # the other requests of the same moment: one pause, one log line
            pause = self._next
            self._until = now + pause
            self._next = min(self._longest, pause * 2)
            self._refused = True
            self._probes.credentials_ok = False
        log.error("ciotrack worker: Customer.io refused this worker's credentials for site id %s (HTTP %s): the "
                  "API key is wrong, rotated or revoked. Delivery paused for %.0f s; entries go back to the "
                  "stream untried (not counted against --max-deliveries). Check CIOTRACK_API_KEY.",
                  self._site_id, status, pause)

    def accepted(self) -> None:
        """An answer accepted the key: no pause any more, the next refusal starts from the first pause."""
        if not self._refused:
            return
        with self._lock:
            if not self._refused:
                return
            self._refused = False
            self._next = self._first
            self._until = 0.0
            self._probes.credentials_ok = True
        log.warning("ciotrack worker: Customer.io accepts this worker's credentials again (site id %s); delivering",
                    self._site_id)

    def remaining(self) -> float:
        """Seconds of pause left (0: deliver)."""
        return max(0.0, self._until - time.monotonic())
