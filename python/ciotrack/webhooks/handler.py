"""``WebhookHandler``: verify, dedup, hand off, answer at once (the fast-ack pattern).

Customer.io holds back every later webhook until a failed one succeeds, for up to 7 days, so the
answer must never depend on the user's processing: ``handle()`` verifies the signature, claims the
``event_id``, submits the event to a thread pool and answers 200 in microseconds. A handler that
raises is retried with backoff, then parked (kept in ``parked`` and passed to ``on_parked``),
never answered with a 5xx. ``inline=True`` runs the handler before answering and answers
``failure_status`` when it finally fails (Customer.io then retries) — only if you want that.
Inline handling and a ``dispatch`` hand-off hold a lease on the ``event_id`` while they run, made
for good only once they succeed (``webhooks.dedup``): a retry that arrives meanwhile gets 503, not a
200 "duplicate" that would lose the event if the first attempt then failed.

Framework adapters (``ciotrack.webhooks.adapters``) only move bytes and headers in and out of
``handle()``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ciotrack.webhooks.dedup import DEFAULT_LEASE, FIRST, IN_PROGRESS, Dedup, MemoryDedup
from ciotrack.webhooks.events import Event
from ciotrack.webhooks.signature import (
    DEFAULT_TOLERANCE,
    Clock,
    Secrets,
    WebhookVerificationError,
    parse_body,
    verify_signature,
)
from ciotrack.webhooks.workers import DEFAULT_LINGER, Workers

logger = logging.getLogger("ciotrack.webhooks")

EventHandler = Callable[[Event], object]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Parked:
    """An event the handler gave up on (``event`` is None for a signed body that did not parse)."""

    event: Event | None
    body: bytes
    error: str
    attempts: int
    at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        ident = self.event.event_id if self.event is not None else f"<{len(self.body)} bytes>"
        return f"Parked({ident}, error={self.error!r}, attempts={self.attempts})"


_OK: Final = Response(200, b'{"ok":true}')
_DUPLICATE: Final = Response(200, b'{"ok":true,"duplicate":true}')
_PARKED: Final = Response(200, b'{"ok":true,"parked":true}')
_BUSY: Final = Response(503, b'{"error":"busy"}', headers=(("Retry-After", "1"),))
_IN_PROGRESS: Final = Response(503, b'{"error":"in_progress"}', headers=(("Retry-After", "5"),))
_TOO_LARGE: Final = Response(413, b'{"error":"body_too_large"}')
# Larger than any reporting webhook (a "sent" event carries the message's content when Body Content is
# on; a large HTML email is well under 1 MB); a body above it is refused before it is read, since
# nothing is known about its sender until the whole body is verified.
DEFAULT_MAX_BODY: Final = 10 * 1024 * 1024


class _Throttled:
    """Log one line per ``key`` per ``interval`` seconds, with how many were folded into it."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last, folded = self._last.get(key, (-1e9, 0))
            if now - last < self.interval:
                self._last[key] = (last, folded + 1)
                return
            self._last[key] = (now, 0)
        suffix = f" (and {folded} more like it)" if folded else ""
        logger.warning(message + suffix, *args)


def _no_handler(event: Event) -> None:
    raise RuntimeError("this WebhookHandler dispatches events; it has no local handler")


class WebhookHandler:
    """Verify + dedup + fast-ack dispatch of reporting webhooks to ``handler(event)``.

    ``dispatch``: instead of the thread pool, hand each event to this callable in the request
    (a durable queue, e.g. ``RedisStreamDispatch``: another process runs ``handler``); if it
    raises, the answer is 503 and the event is not marked seen, so Customer.io's retry is taken.

    ``secret``: the signing key or several (rotation; none may be empty). ``dedup``: a
    ``MemoryDedup`` by default, a ``RedisDedup`` for a fleet, or None for none. ``lease``: how long
    inline handling or a hand-off may hold an event's id before a retry may take it (see
    ``webhooks.dedup``). ``workers``: handler threads. ``max_pending``: events accepted but not yet
    handled; beyond it ``handle()`` answers 503 without claiming the id, so Customer.io retries later
    instead of the process growing without bound. ``retries``
    and ``retry_backoff`` (seconds, doubled per attempt) before an event is parked. ``linger``:
    under load, how long the one napping handler thread sleeps between looks at the queue (5 ms), so an
    event waits at most this long and no thread is woken per webhook (see ``webhooks.workers``): a
    longer linger costs fewer wake-ups (CPU and GIL hand-overs beside the answering thread), a
    shorter one handles sooner. ``max_body``: the largest body accepted, in bytes; a larger one is
    answered 413 (the adapters stop reading it there)."""

    def __init__(
        self,
        secret: Secrets,
        handler: EventHandler | None = None,
        *,
        dedup: Dedup | None | bool = True,
        workers: int = 4,
        max_pending: int = 10_000,
        retries: int = 3,
        retry_backoff: float = 0.1,
        inline: bool = False,
        failure_status: int = 500,
        tolerance: float | None = DEFAULT_TOLERANCE,
        now: Clock | None = None,
        on_parked: Callable[[Parked], object] | None = None,
        keep_parked: int = 1000,
        dispatch: Callable[[Event], object] | None = None,
        linger: float = DEFAULT_LINGER,
        lease: float = DEFAULT_LEASE,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if (handler is None) == (dispatch is None):
            raise ValueError("give either handler (run here, in a thread pool) or dispatch (a durable hand-off)")
        if isinstance(secret, str | bytes):
            secrets: Secrets = secret
        else:
            secrets = tuple(secret)
        if not secrets:
            raise ValueError("no webhook signing secret given")
        if not isinstance(secrets, str | bytes) and not all(secrets):
            # An HMAC keyed with nothing is one anyone can compute (an unset old key in a rotation list).
            raise ValueError("an empty webhook signing secret was given: anyone could sign with it")
        if lease <= 0 or max_body < 1:
            raise ValueError("lease and max_body must be positive")
        self._secret = secrets
        self.handler: EventHandler = handler if handler is not None else _no_handler
        self.dedup: Dedup | None = MemoryDedup() if dedup is True else (None if dedup is False else dedup)
        self.workers = workers
        self.max_pending = max_pending
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.inline = inline
        self.failure_status = failure_status
        self.tolerance = tolerance
        self.now = now
        self.on_parked = on_parked
        self.dispatch = dispatch
        self.linger = linger
        self.lease = lease
        self.max_body = max_body
        self.parked: collections.deque[Parked] = collections.deque(maxlen=keep_parked)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._executor: Workers[Event | Parked] | None = None
        self._pool_pid = os.getpid()
        self._closed = False
        self._log = _Throttled()

    def __repr__(self) -> str:  # never the secret
        return f"WebhookHandler(handler={self.handler!r}, workers={self.workers}, inline={self.inline})"

    # -- the request path --------------------------------------------------------------------

    def handle(self, body: bytes | bytearray | memoryview | str, headers: Any) -> Response:
        """Answer one webhook request (body as received, headers as the framework gives them)."""
        if len(body) > self.max_body:
            return self.too_large()
        try:
            raw = verify_signature(body, headers, self._secret, tolerance=self.tolerance, now=self.now)
        except WebhookVerificationError as err:
            self._count("rejected", "rejected:" + err.reason)
            self._log.warning("rejected:" + err.reason, "reporting webhook rejected: %s", err)
            return Response(401, json.dumps({"error": err.reason}).encode())
        try:
            event = parse_body(raw)
        except WebhookVerificationError as err:
            # Signed by Customer.io but not an event we can read: refusing it would stall the feed.
            self._count("received")
            self._park(Parked(None, raw, str(err), 0), in_request=True)
            return _PARKED
        if self.dispatch is not None or self.inline:
            return self._handle_leased(event)
        pid = os.getpid()
        with self._lock:
            if self._pool_pid != pid:
                self._adopt_after_fork(pid)
            busy = self._pending >= self.max_pending or self._closed
            if not busy:
                # Counted before the claim, in this one locked block: taken back if the claim refuses.
                self._pending += 1
                self._counts["received"] += 1
        if busy:
            # Nothing was claimed: Customer.io's retry is taken once there is room.
            self._count("busy")
            return _BUSY
        if self.dedup is not None:
            refused = self._claim(event, None)
            if refused is not None:
                self._finished(received=-1)
                return refused
        self._pool().submit(event)
        return _OK

    def too_large(self) -> Response:
        """The answer to a body over ``max_body`` (413); the adapters call it before reading such a body."""
        self._count("rejected", "rejected:body_too_large")
        self._log.warning("rejected:body_too_large", "reporting webhook rejected: the body is over %d bytes",
                          self.max_body)
        return _TOO_LARGE

    def _claim(self, event: Event, lease: float | None) -> Response | None:
        """None when this request takes the event; else the answer: a duplicate (200), an event another
        request is working on or a dedup store that failed closed (503, so Customer.io retries)."""
        try:
            claim = self.dedup.claim(event.event_id, lease)  # type: ignore[union-attr]
        except Exception as exc:  # a shared dedup store that fails closed (RedisDedup(fail_open=False))
            self._count("busy", "dedup_failed")
            self._log.warning("dedup", "webhook dedup failed (%s: %s); answered 503 so Customer.io retries",
                              type(exc).__name__, exc)
            return _BUSY
        if claim is FIRST or claim is True:  # (True: a Dedup of before leases; no __bool__ call)
            return None
        if claim is IN_PROGRESS:
            self._count("busy", "in_progress")
            return _IN_PROGRESS
        self._count("received", "duplicates")
        return _DUPLICATE

    def _handle_leased(self, event: Event) -> Response:
        """Inline handling or a hand-off: the claim is a lease while that runs, made for good only if
        it succeeds, given back if not (and a lease that cannot be given back ends by itself)."""
        if self.dedup is not None:
            refused = self._claim(event, self.lease)
            if refused is not None:
                return refused
        accepted = False
        try:
            if self.dispatch is not None:
                accepted = self._dispatch(event)
            else:
                self._count("received")
                accepted = self._process(event, inline=True)
        finally:
            if self.dedup is not None:
                self._settle(event.event_id, accepted)
        if accepted:
            return _OK
        if self.dispatch is not None:
            return _BUSY
        return Response(self.failure_status, b'{"error":"handler failed"}')

    def _settle(self, event_id: str, accepted: bool) -> None:
        try:
            if accepted:
                self.dedup.confirm(event_id)  # type: ignore[union-attr]
            else:
                self.dedup.release(event_id)  # type: ignore[union-attr]
        except Exception:  # a user's Dedup; ours log and let the lease end
            logger.exception("webhook dedup: %s(%r) raised", "confirm" if accepted else "release", event_id)

    def _dispatch(self, event: Event) -> bool:
        # A durable hand-off (e.g. XADD to a Redis stream). If it fails we have not taken the event:
        # the claim is given back and the answer is 503, so Customer.io retries it later.
        try:
            self.dispatch(event)  # type: ignore[misc]
        except Exception as exc:
            self._count("busy", "dispatch_failed")
            self._log.warning("dispatch", "webhook hand-off failed (%s: %s); answered 503 so Customer.io retries",
                              type(exc).__name__, exc)
            return False
        self._count("received", "dispatched")
        return True

    @property
    def may_block(self) -> bool:
        """True when ``handle()`` may wait on I/O or run user code before answering (inline handling, a
        hand-off, a dedup store other than memory): the ASGI adapters then call it off the event loop."""
        return (self.inline or self.dispatch is not None
                or not (self.dedup is None or type(self.dedup) is MemoryDedup))

    # -- the background side -----------------------------------------------------------------

    def _adopt_after_fork(self, pid: int) -> None:
        """In a forked child (a pre-loading server) the parent's threads do not exist and its pending
        count is the parent's: start over with a pool of our own. Called with ``_lock`` held, in the
        block that counts the item about to be pooled, so no other request's item goes uncounted."""
        self._executor = None
        self._pending = 0
        self._pool_pid = pid

    def _pool(self) -> Workers[Event | Parked]:
        executor = self._executor
        if executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = Workers(self.workers, self._run_pooled, linger=self.linger)
                executor = self._executor
        return executor

    def _run_pooled(self, item: Event | Parked) -> None:
        try:
            if isinstance(item, Parked):
                self._notify_parked(item)
            else:
                self._process(item, inline=False)
        finally:
            self._finished()

    def _finished(self, received: int = 0) -> None:
        """One accepted item less is pending (and ``received`` added to that count)."""
        with self._idle:
            self._counts["received"] += received
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    def _process(self, event: Event, *, inline: bool) -> bool:
        attempts = 0
        while True:
            attempts += 1
            try:
                self.handler(event)
            except Exception as exc:
                if attempts <= self.retries:
                    self._count("retried")
                    time.sleep(self.retry_backoff * (2 ** (attempts - 1)))
                    continue
                error = f"{type(exc).__name__}: {exc}"
                if inline:
                    self._count("failed")
                    self._log.warning("failed", "webhook handler failed for %s after %d attempts: %s",
                                      event.event_id, attempts, error)
                else:
                    self._park(Parked(event, b"", error, attempts))
                return False
            self._count("handled")
            return True

    def _park(self, parked: Parked, *, in_request: bool = False) -> None:
        self._count("parked")
        self.parked.append(parked)
        self._log.warning("parked", "reporting webhook parked after %d attempts: %r", parked.attempts, parked)
        if self.on_parked is None:
            return
        if in_request:
            # The user's callback runs on a handler thread, not before the answer (nor on an event loop).
            pid = os.getpid()
            with self._lock:
                if self._pool_pid != pid:
                    self._adopt_after_fork(pid)
                self._pending += 1
            self._pool().submit(parked)
        else:
            self._notify_parked(parked)

    def _notify_parked(self, parked: Parked) -> None:
        try:
            self.on_parked(parked)  # type: ignore[misc]
        except Exception:
            logger.exception("on_parked raised")

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    # -- inspection and shutdown -------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: received, handled, retried, parked, duplicates, rejected (+ ``rejected:<reason>``),
        busy (+ ``in_progress``, ``dedup_failed``, ``dispatch_failed``), failed (inline), and ``pending``
        (accepted, not yet handled)."""
        with self._lock:
            out = dict.fromkeys(("received", "handled", "retried", "parked", "duplicates", "rejected", "busy",
                                 "failed", "dispatched"), 0)
            out.update(self._counts)
            out["pending"] = self._pending
        return out

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every accepted event is handled or parked; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """Refuse new webhooks (503), finish the accepted ones; True if all were handled in time."""
        with self._lock:
            self._closed = True
        drained = self.drain(timeout)
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.stop(timeout if drained else 0.0)
        return drained

    def __enter__(self) -> WebhookHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EventHandler", "Parked", "Response", "WebhookHandler"]
