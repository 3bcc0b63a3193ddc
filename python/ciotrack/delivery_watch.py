"""Saying what is wrong with delivery while it happens, not after the retry budget.

One :class:`DeliveryWatch` per destination (per region) sees every request's answer
(:meth:`DeliveryWatch.answered`, called by :class:`~ciotrack.delivery.Delivery` after each send) and
logs, on ``ciotrack.health``:

* a WARNING at the **first failed attempt of each cause** (connection refused, timeout, TLS, DNS, a
  status such as ``HTTP 503``), naming the endpoint and the queue depth; the same cause again is
  repeated at most every :data:`REMIND_EVERY` seconds while it lasts, with counts;
* an ERROR, once per episode, when the credentials are refused (401/403), with ciotrack's own hint
  (:func:`~ciotrack.preflight.credentials_hint`): a configuration error, not an outage;
* an INFO when delivery **recovers**: how long it was failing, how many attempts failed, and the
  largest queue depth seen meanwhile.

:meth:`DeliveryWatch.problem` is the current cause (``connection refused to http://...``), which the
loss ledger appends to its shutdown and drop lines. With ``debug=True`` (``CIOTRACK_DEBUG=1``) every
request also logs one DEBUG line on ``ciotrack.http`` (method, URL, answer, milliseconds, operations,
bytes; never the key or the body).

Requests that succeed cost one lock-free flag check here; only failures and recoveries take the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ciotrack.destinations.base import Outcome
from ciotrack.preflight import credentials_hint
from ciotrack.redact import redacted_url

__all__ = ["DeliveryWatch", "cause_of", "debug_logger", "health_logger"]

health_logger = logging.getLogger("ciotrack.health")
debug_logger = logging.getLogger("ciotrack.http")

REMIND_EVERY = 30.0
"""While one cause lasts, its WARNING is repeated (with counts) at most this often."""
QUIET_AFTER_RECOVERY = 10.0
"""A new episode of a cause warned about less than this long ago stays quiet (and so does its recovery):
a destination flapping on 429s or 503s gives one WARNING/INFO pair per interval, not one per blip."""

_monotonic = time.monotonic


def cause_of(outcome: Outcome) -> str:
    """A short human name of why a request failed: ``connection refused``, ``timeout``, ``HTTP 503``."""
    status = outcome.status
    reason = outcome.reason
    code = reason.split(":", 1)[0].strip()
    lowered = reason.lower()
    if status in (401, 403):
        return f"HTTP {status} (credentials refused)"
    if code == "connection_error":
        if "refused" in lowered:
            return "connection refused"
        if "name or service not known" in lowered or "nameresolution" in lowered or "getaddrinfo" in lowered:
            return "DNS lookup failed"
        if "reset" in lowered:
            return "connection reset"
        return "connection error"
    if code in ("timeout", "deadline"):
        return "timeout"
    if code == "tls_error":
        return "TLS error"
    if code == "redirect":
        return f"redirect ({status})"
    if status is not None:
        return f"HTTP {status}"
    return code or "no answer"


class DeliveryWatch:
    """Watches one destination's answers (thread-safe; shared by every sender of that destination)."""

    def __init__(self, *, endpoint: str, region: str, site_id: str, queue_depth: Callable[[], int],
                 debug: bool = False) -> None:
        self.endpoint = redacted_url(endpoint)
        """What the lines name: the batch URL without the password of its userinfo (or the destination's
        name when it is not HTTP)."""
        self.region = region
        self._site_id = site_id
        self._queue_depth = queue_depth
        self._debug = debug
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # monotonic time of the first failed attempt of this episode
        self._cause: str | None = None
        self._failed_attempts = 0
        self._peak_depth = 0
        self._warned: dict[str, float] = {}  # cause -> monotonic time of its last WARNING
        self._auth_reported = False
        self._announced = False  # this episode logged a WARNING/ERROR: its recovery is logged too

    def problem(self) -> str | None:
        """The current cause and where (``connection refused to http://...``), None while delivery works."""
        cause = self._cause
        return None if cause is None else f"{cause} to {self.endpoint}"

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def answered(self, outcome: Outcome, seconds: float, ops: int, body_bytes: int) -> None:
        """One request finished (called on the sender thread right after ``destination.send``)."""
        if self._debug:
            debug_logger.debug("ciotrack: POST %s -> %s in %.1f ms (%d ops, %d bytes)", self.endpoint,
                               outcome.status if outcome.status is not None else outcome.reason[:120],
                               seconds * 1000.0, ops, body_bytes)
        kind = outcome.kind
        if kind == "delivered" or kind == "partial":
            if self._failing_since is not None:
                self._recovered()
            return
        if kind == "split":
            return
        if kind == "final" and outcome.status not in (401, 403) and not outcome.reason.startswith("tls_error"):
            # A batch the server refuses for its content: the loss ledger reports it. An answer means the
            # destination is reachable again: an outage's cause must not be blamed for this refusal.
            if outcome.status is not None and self._failing_since is not None:
                self._recovered()
            return
        self._failed(outcome)

    def _failed(self, outcome: Outcome) -> None:
        cause = cause_of(outcome)
        depth = self._depth()
        now = _monotonic()
        with self._lock:
            if self._failing_since is None:
                self._failing_since = now
            self._cause = cause
            self._failed_attempts += 1
            self._peak_depth = max(self._peak_depth, depth)
            attempts = self._failed_attempts
            since = now - self._failing_since
            last = self._warned.get(cause)
            first = last is None or last < self._failing_since  # not yet said in this episode
            due = last is None or now - last >= (QUIET_AFTER_RECOVERY if first else REMIND_EVERY)
            auth = outcome.status in (401, 403) and not self._auth_reported
            if auth:
                self._auth_reported = True
            if due or auth:
                self._warned[cause] = now
                self._announced = True
        if auth:
            health_logger.error("ciotrack: %s refused the credentials (HTTP %d) for site id %r. %s",
                                self.endpoint, outcome.status, self._site_id,
                                credentials_hint(self.region, self.endpoint))
            return
        if not due:
            return
        detail = outcome.reason.split(":", 1)[1].strip()[:200] if ":" in outcome.reason else outcome.reason
        if first:
            health_logger.warning("ciotrack: delivery to %s (region %s) failing: %s (%s); %d operation(s) waiting; "
                                  "%s", self.endpoint, self.region, cause, detail, depth,
                                  "retrying" if outcome.kind == "retry" else "batches fail until this is fixed")
        else:
            health_logger.warning("ciotrack: delivery to %s (region %s) still failing after %.0f s: %s; %d failed "
                                  "attempt(s) so far, %d operation(s) waiting", self.endpoint, self.region, since,
                                  cause, attempts, depth)

    def _recovered(self) -> None:
        with self._lock:
            since = self._failing_since
            if since is None:
                return
            down_for = _monotonic() - since
            attempts, peak, cause = self._failed_attempts, self._peak_depth, self._cause
            self._failing_since = None
            self._cause = None
            self._failed_attempts = 0
            self._peak_depth = 0
            self._auth_reported = False
            announced, self._announced = self._announced, False
        if not announced:
            return
        health_logger.info("ciotrack: delivery to %s (region %s) recovered after %.1f s of %s (%d failed attempt(s), "
                           "up to %d operation(s) waiting, %d now)", self.endpoint, self.region, down_for,
                           cause, attempts, peak, self._depth())

    def _depth(self) -> int:
        try:
            return int(self._queue_depth())
        except Exception:  # a gauge for a log line must never break delivery
            return -1


def enable_debug_lines() -> None:
    """``debug=True``: let ``ciotrack.http``'s DEBUG lines through to the application's handlers, unless
    the application set that logger's level itself (no handler is added; the root's handlers show them)."""
    if debug_logger.level == logging.NOTSET:
        debug_logger.setLevel(logging.DEBUG)
