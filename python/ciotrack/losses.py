"""The loss ledger: every operation that will not reach the destination goes through one door.

Two kinds of loss, one vocabulary (:class:`Reason`):

* a **drop** happens before sending (a full queue, a call after ``close()``, the exit deadline):
  counted as ``dropped_<reason>`` and reported to ``on_drop(reason, count)``;
* a **final failure** happens to operations that were sent (a 4xx, a 207 rejection, retries run out,
  abandoned at shutdown): counted as ``failed`` and ``failed_<label>``, and reported to
  ``on_error(DeliveryError)`` with the operations themselves.

Both log a throttled warning (one line per reason per interval, however many operations). The
counter names are the ones :class:`~ciotrack.stats.Stats` and the Prometheus collector group by, so a
reason has one spelling from the core to a scrape. Two drop counters are kept by the native core
on the caller's thread (``dropped_full``, ``dropped_oldest``): :attr:`Reason.counter` names them, so
the Python side counts the same reason under the same name.

The label of a failure is its reason (``retries_exhausted``, ``unreachable``, ``shutdown``), except
for :attr:`Reason.REJECTED`, where it is the destination's code: ``Outcome.reason`` is
``code[: detail]`` by contract (``http_400: ...``, a 207's ``invalid: id: ...``, ``tls_error: ...``),
and :func:`failure_label` takes that code, nothing else.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ciotrack.errors import DeliveryError
from ciotrack.logs import ThrottledLog

if TYPE_CHECKING:
    from ciotrack.delivery import Recorder

__all__ = ["Ledger", "Reason", "drop_reason", "failure_label"]


class Reason(enum.StrEnum):
    """Why operations were lost. The values are the strings ``on_drop`` receives and the labels of
    ``stats().dropped`` / ``stats().failed`` (documented in :class:`~ciotrack.config.Config`)."""

    # Drops: never sent.
    QUEUE_FULL = "queue_full"
    """``drop_newest``, ``block`` past ``block_timeout``, or ``spool`` with no spool to take it."""
    EVICTED_OLDEST = "evicted_oldest"
    """``drop_oldest`` made room for a newer operation."""
    CLOSED = "closed"
    """A call after ``close()``."""
    SHUTDOWN = "shutdown"
    """Still queued at the close/exit deadline (a drop), or in a batch abandoned then (a failure)."""
    SHUTDOWN_IN_FLIGHT = "shutdown_in_flight"
    """In a request still running at the close/exit deadline (a stalled or trickling receiver) and no
    spool to take a copy: reported as failed, its late verdict is not reported again."""
    RELEASED = "released"
    """The Tracker was garbage-collected with no sender running."""
    SPOOL_EVICTED = "spool_evicted"
    """The spool's size cap evicted its oldest segments."""
    SPOOL_FULL = "spool_full"
    """Operations the spool refused: no room under its size cap (everything else held by other
    processes), or a single operation larger than the cap."""
    SPOOL_DELETED = "spool_deleted"
    """Spooled operations whose segment file someone else deleted (a tmp cleaner)."""
    SPOOL_DAMAGED = "spool_damaged"
    """Spooled operations in a record that failed its checksum on replay (disk or filesystem damage):
    counted from the record's header, whose own checksum vouches for the count."""
    # Final failures: sent, never accepted.
    REJECTED = "rejected"
    """The destination's final answer (a 4xx, a 207's per-operation error, a TLS failure)."""
    RETRIES_EXHAUSTED = "retries_exhausted"
    """``max_retries``/``retry_budget`` ran out and no spool took the batch."""
    UNREACHABLE = "unreachable"
    """The destination is known down (a batch already ran out of retries) and no spool took it."""
    DEAD_LETTER = "dead_letter"
    """Spooled operations replayed and failed again too many times: moved to a ``*.dead`` file in the
    spool directory (kept for inspection, never replayed)."""

    @property
    def counter(self) -> str:
        """The core counter of this drop reason (the core's own name for the two it counts)."""
        return _CORE_DROP_COUNTERS.get(self, "dropped_" + self.value)


_CORE_DROP_COUNTERS = {Reason.QUEUE_FULL: "dropped_full", Reason.EVICTED_OLDEST: "dropped_oldest"}
_BY_COUNTER_SUFFIX = {counter.removeprefix("dropped_"): reason.value for reason, counter in _CORE_DROP_COUNTERS.items()}
_LABEL_CHARS = re.compile(r"[^a-z0-9_]+")


def drop_reason(counter_suffix: str) -> str:
    """The ``on_drop`` reason of a ``dropped_<suffix>`` counter (``full`` -> ``queue_full``)."""
    return _BY_COUNTER_SUFFIX.get(counter_suffix, counter_suffix)


def failure_label(code_and_detail: str) -> str:
    """The counter label of a destination's reason ``code[: detail]``: the code, as a metric label."""
    code = code_and_detail.split(":", 1)[0].strip().lower()
    return _LABEL_CHARS.sub("_", code)[:40] or "unknown"


# What a drop logs, with the count (CLOSED is the caller's own doing: counted and reported, not logged).
_DROP_MESSAGES: dict[Reason, str] = {
    Reason.QUEUE_FULL: "queue full; %d operation(s) dropped",
    Reason.EVICTED_OLDEST: "queue full (policy drop_oldest); %d oldest operation(s) dropped",
    Reason.SHUTDOWN: "%d queued operation(s) not delivered before the deadline",
    Reason.RELEASED: "tracker collected with %d undelivered operation(s) (no sender running)",
    Reason.SPOOL_EVICTED: "spool over its size cap; %d oldest spooled operation(s) evicted",
    Reason.SPOOL_FULL: "spool full; %d operation(s) refused, not spooled",
    Reason.SPOOL_DAMAGED: "%d spooled operation(s) lost in damaged spool record(s)",
    Reason.DEAD_LETTER: "%d spooled operation(s) kept failing on replay; moved to a dead-letter file",
}


class Ledger:
    """Counts, reports and logs losses for one pipeline. Thread-safe (the recorder's counters are
    atomic, hooks run on the reporting thread, the throttled log has its own lock)."""

    def __init__(self, recorder: Recorder, *, on_drop: Callable[[str, int], object] | None,
                 on_error: Callable[[DeliveryError], object] | None, logger: logging.Logger,
                 forget: Callable[[Sequence[bytes]], object] | None = None) -> None:
        self._recorder = recorder
        self._forget = forget
        self._on_drop = on_drop
        self._on_error = on_error
        self.log = ThrottledLog(logger)
        """The pipeline's throttled warnings (losses, raising hooks, spool trouble)."""
        self.cause: Callable[[], str | None] | None = None
        """What currently keeps delivery from working (``connection refused to http://...``), appended to
        the loss lines, so "963 operations not delivered" says why (set by the pipeline)."""
        self.closing = False
        """Set by ``close()``: from then on no hook exception propagates, on any thread."""

    def lose(self, reason: Reason, count: int, *, ops: Sequence[bytes] | None = None, status: int | None = None,
             detail: str = "", attempts: int = 0, region: str = "", counted: bool = False) -> None:
        """The one door. Without ``ops``: a drop of ``count`` operations (``counted``: the core already
        counted it). With ``ops``: a final failure of those operations, ``detail`` being the reason
        ``on_error`` sees (``retries exhausted: http_503``, ``http_401: ...``)."""
        if count <= 0:
            return
        if ops is None:
            if not counted:
                self._recorder.incr(reason.counter, count)
            message = _DROP_MESSAGES.get(reason)
            if message is not None:
                suffix = f" ({detail.replace('%', '%%')})" if detail else ""
                self.log.count(reason.value, "ciotrack: " + message + suffix + self._cause_suffix(), count)
            if self._on_drop is not None:
                self.call_hook(self._on_drop, reason.value, count)
            return
        # Their dedup keys go first: the application may well send them again from on_error, or later,
        # and that must not be dropped as a duplicate of what Customer.io never accepted.
        self.forget(ops)
        label = failure_label(detail) if reason is Reason.REJECTED else reason.value
        self._recorder.incr("failed", count)
        self._recorder.incr("failed_" + label, count)
        # Throttled per region and cause: a batch refused with a 400 right after an outage's retries ran out
        # is a different problem, and this line is the only one that says it.
        self.log.count(f"failed:{region}:{label}",
                       "ciotrack: %d operation(s) to region %s failed after %d attempt(s): %s" + self._cause_suffix(),
                       count, region, attempts, detail)
        if self._on_error is not None:
            error = DeliveryError(f"{count} operation(s) failed: {detail}", ops=list(ops), status=status,
                                  reason=detail, attempts=attempts, region=region)
            self.call_hook(self._on_error, error)

    def forget(self, ops: Sequence[bytes]) -> None:
        """Take lost operations out of the dedup memory (sending them again is no duplicate): every loss
        whose operations are known goes through here, a final failure or a spool dead letter."""
        if self._forget is not None:
            self._forget(ops)

    def _cause_suffix(self) -> str:
        cause = self.cause() if self.cause is not None else None
        return "" if not cause else "; delivery failing: " + cause.replace("%", "%%")

    def drop(self, reason: Reason, count: int, *, counted: bool = False, detail: str = "") -> None:
        """Operations lost before sending (see :meth:`lose`)."""
        self.lose(reason, count, counted=counted, detail=detail)

    def fail(self, reason: Reason, ops: Sequence[bytes], *, status: int | None, detail: str, attempts: int,
             region: str) -> None:
        """Operations that were sent and will never be accepted (see :meth:`lose`)."""
        self.lose(reason, len(ops), ops=ops, status=status, detail=detail, attempts=attempts, region=region)

    def call_hook(self, hook: Callable[..., object], *args: object) -> None:
        """Run a user hook; what it raises is logged (throttled), never propagated, with one exception:
        a ``KeyboardInterrupt``/``SystemExit`` (any non-``Exception``) raised on the main thread is the
        application's own wish to stop, re-raised once the loss is counted. On any other thread (a
        sender) it would only end that thread: it is logged and delivery goes on."""
        try:
            hook(*args)
        except Exception:
            self.log.warning("hook", "ciotrack: hook %s raised; ignored (delivery goes on)", _hook_name(hook),
                             exc_info=True)
        except BaseException as exc:
            if threading.current_thread() is threading.main_thread() and not self.closing:
                raise
            self.log.warning("hook", "ciotrack: hook %s raised %s on a ciotrack thread; ignored (delivery goes on)",
                             _hook_name(hook), type(exc).__name__, exc_info=True)


def _hook_name(hook: Callable[..., object]) -> str:
    # The hook's name, not its repr: a functools.partial's repr would show its bound arguments.
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__
