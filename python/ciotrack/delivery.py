"""One delivery loop: a batch, a limiter token, ``destination.send``, the status table, a verdict.

:meth:`Delivery.deliver` is the state machine shared by the in-process pipeline
(:mod:`ciotrack.pipeline`) and any other driver (a worker reading batches from a stream). It knows
nothing of lanes, flush accounting or the spool: it takes a :class:`Job`, answers with
:class:`Result` verdicts, and leaves what a verdict means (ack, spool, report) to its caller.

The status table, through the destination's :class:`~ciotrack.destinations.Outcome`:

* ``delivered``/``partial`` -> :attr:`Verdict.DELIVERED` (a partial's rejected operations in
  :attr:`Result.failures`);
* ``retry`` -> wait a jittered backoff (``Retry-After`` is a floor; a 429 also pauses the limiter,
  so every sender of that limiter waits, not only this one), then send the same bytes again; when
  the policy gives up -> :attr:`Verdict.EXHAUSTED`;
* ``split`` -> halve the batch (``on_split`` hands the caller the halves' jobs) and deliver each half,
  one :class:`Result` per finished piece, in order; a single operation cannot be split -> FAILED;
* ``final`` -> :attr:`Verdict.FAILED`.

Every wait (token, backoff) ends early at ``deadline`` (:attr:`Verdict.DEADLINE`: the job keeps its
retry state, so a later ``deliver`` resumes it) or when ``stop`` is set (:attr:`Verdict.STOPPED`).
Counters and histograms go to the :class:`Recorder` under the names :class:`~ciotrack.stats.Stats`
reads: ``request_latency_seconds``, ``requests_<status>``/``requests_error``, ``retried``, ``split``,
``bytes_sent``, ``batch_ops``, ``batch_bytes``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ciotrack._core import Batch
from ciotrack.destinations.base import Destination, Outcome
from ciotrack.lifecycle import block_exit_signals
from ciotrack.logs import ThrottledLog
from ciotrack.ratelimit import Limiter
from ciotrack.retry import RetryPolicy

__all__ = ["DESTINATION_DOWN", "Deliverable", "Delivery", "Health", "Job", "Recorder", "Result", "Verdict", "Watch"]

log = logging.getLogger("ciotrack.delivery")
_monotonic = time.monotonic
_perf_counter = time.perf_counter

DESTINATION_DOWN = "unreachable: destination known down (a batch ran out of retries, nothing delivered since)"
"""The reason of an :attr:`Verdict.EXHAUSTED` result given without a request, the destination being down."""


class Deliverable(Protocol):
    """A batch body and what is needed to split it (``ciotrack._core.Batch`` satisfies it)."""

    @property
    def body(self) -> bytes: ...

    @property
    def count(self) -> int: ...

    def ops(self) -> list[bytes]: ...

    def split(self) -> tuple[Deliverable, Deliverable]: ...


class Watch(Protocol):
    """Sees each request's answer (:class:`ciotrack.delivery_watch.DeliveryWatch`); must not raise."""

    def answered(self, outcome: Outcome, seconds: float, ops: int, body_bytes: int) -> None: ...


class Recorder(Protocol):
    """Where counters and histograms go (``ciotrack._core.Core`` satisfies it)."""

    def incr(self, counter: str, n: int = 1) -> None: ...

    def observe(self, histogram: str, value: float) -> None: ...


@dataclass(slots=True)
class Job:
    """One batch on its way, with its retry state (kept across a DEADLINE verdict, to resume)."""

    batch: Deliverable
    attempts: int = 0
    """Retries made so far (requests that answered "retry")."""
    first_attempt: float | None = None
    """``time.monotonic()`` of the first request (the retry budget counts from it)."""
    sending: bool = False
    """A request for this job is open right now (else its thread is waiting, for a token or out a retry
    delay, or has not sent it yet): what ``close()`` says of the batch when it gives up on the thread."""


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    """Accepted (``Result.failures``: the rejected operations of a 207, as indexes into the batch)."""
    FAILED = "failed"
    """A final answer: never retry these bytes."""
    EXHAUSTED = "exhausted"
    """Retries or the retry budget ran out, or the destination is known down (no request then)."""
    DEADLINE = "deadline"
    """The deadline passed first; the job keeps its retry state and may be delivered again."""
    STOPPED = "stopped"
    """The stop event was set."""


@dataclass(frozen=True, slots=True)
class Result:
    """A finished piece of a job (the job itself, or one half of a split)."""

    verdict: Verdict
    job: Job
    status: int | None
    """The last answer's status (None when no answer arrived, or no request was made)."""
    reason: str
    """The last answer's reason: ``retries exhausted: <reason>`` (or :data:`DESTINATION_DOWN`, no request
    made) for EXHAUSTED; ``deadline``/``stopped`` when the wait for a token was cut."""
    failures: tuple[tuple[int, str], ...] = ()
    """For DELIVERED: ``(index, reason)`` of each rejected operation, indexes into ``job.batch``."""


class Health:
    """Whether one destination is up, down, or not known yet (at start).

    Down once a batch ran out of retries (:meth:`exhausted`), or after :data:`DOWN_AFTER` requests in
    a row got no answer at all (refused, reset, timed out) with nothing delivered for
    :data:`DOWN_QUIET` seconds (the quiet period keeps a flaky but working destination up). Any
    delivery marks it up at once. While it is not up, :meth:`probe` asks ``destination.probe()``,
    with backoff from :data:`PROBE_MIN` to :data:`PROBE_MAX` seconds between probes.

    Counts are kept without a lock: an approximate count of failures in a row is enough, and this is
    called for every request.
    """

    DOWN_AFTER = 3
    DOWN_QUIET = 2.0
    PROBE_MIN = 0.5
    PROBE_MAX = 30.0

    _UNKNOWN, _UP, _DOWN = 0, 1, 2

    def __init__(self, destination: Destination | None, *, on_up: Callable[[], None] | None = None) -> None:
        self.destination = destination
        """Probed while not up (settable: a destination bound later, e.g. after a region lookup)."""
        self.on_up = on_up
        """Called when the destination comes back up (the spool starts replaying)."""
        self._state = Health._UNKNOWN
        self._no_answer = 0
        self._last_delivery = float("-inf")
        self._probe_delay = Health.PROBE_MIN
        self._next_probe = 0.0
        self._probing = False

    @property
    def up(self) -> bool:
        return self._state == Health._UP

    @property
    def down(self) -> bool:
        return self._state == Health._DOWN

    def delivered(self) -> None:
        """A batch was delivered (or a probe answered): up (cheap; called for every delivered batch)."""
        self._no_answer = 0
        self._last_delivery = _monotonic()
        if self._state != Health._UP:
            self._state = Health._UP
            self._probe_delay = Health.PROBE_MIN
            on_up = self.on_up
            if on_up is not None:
                on_up()

    def failed_attempt(self, *, answered: bool) -> None:
        """A request to be retried. Any answer (429, 5xx) proves the destination reachable."""
        if answered:
            self._no_answer = 0
            return
        self._no_answer += 1
        if self._no_answer >= Health.DOWN_AFTER and _monotonic() - self._last_delivery >= Health.DOWN_QUIET:
            self.exhausted()

    def exhausted(self) -> None:
        """A batch ran out of retries: down until a delivery or a probe succeeds."""
        if self._state != Health._DOWN:
            self._state = Health._DOWN
            self._next_probe = _monotonic() + self._probe_delay

    # -- probing ----------------------------------------------------------------------------------

    def probe_due(self) -> bool:
        """Not up, no probe running, and the backoff since the last probe has passed."""
        return self._state != Health._UP and not self._probing and _monotonic() >= self._next_probe

    def defer_probe(self, seconds: float | None = None) -> None:
        """No probe before ``seconds`` from now (default: the current backoff)."""
        self._next_probe = _monotonic() + (self._probe_delay if seconds is None else seconds)

    def expect_probe_soon(self) -> None:
        """Something now waits for the destination: probe within the current backoff at the latest."""
        if self._state != Health._UP:
            self._next_probe = min(self._next_probe, _monotonic() + self._probe_delay)

    def probe(self) -> bool:
        """Probe now, on this thread. Up on success; down with a doubled backoff otherwise."""
        destination = self.destination
        try:
            ok = destination is not None and bool(destination.probe())
        except Exception:  # a destination's bug must not take the caller down: count it as no answer
            _warn.warning("probe", "ciotrack: %s.probe() raised; counted as down", type(destination).__name__,
                          exc_info=True)
            ok = False
        if ok:
            self.delivered()
        else:
            self._state = Health._DOWN
            self._probe_delay = min(Health.PROBE_MAX, self._probe_delay * 2)
        return ok

    def probe_in_background(self) -> None:
        """Start one probe on a short-lived thread (none when one is running), and defer the next."""
        if self._probing:
            return
        self.defer_probe()
        self._probing = True
        try:
            threading.Thread(target=self._probe_thread, name="ciotrack-spool-probe", daemon=True).start()
        except RuntimeError:  # interpreter shutdown
            self._probing = False

    def _probe_thread(self) -> None:
        block_exit_signals()
        try:
            self.probe()
        finally:
            self._probing = False


_warn = ThrottledLog(log)


class _Again:
    """The answer of ``Delivery._verdict`` meaning: the backoff passed, send the same bytes again."""


_AGAIN = _Again()


class Delivery:
    """Delivers jobs to one destination under one limiter (thread-safe: one per destination, shared
    by every sender thread)."""

    def __init__(self, destination: Destination, *, limiter: Limiter | None, policy: RetryPolicy,
                 stop: threading.Event, recorder: Recorder | None = None, health: Health | None = None,
                 on_split: Callable[[Deliverable, Job, Job], None] | None = None,
                 on_response: Callable[[float, Outcome], None] | None = None,
                 on_send: Callable[[], None] | None = None, watch: Watch | None = None) -> None:
        self.destination = destination
        self.limiter = limiter
        self.policy = policy
        self._stop = stop
        self._recorder = recorder if recorder is not None else _NO_RECORDER
        self._health = health
        self._on_split = on_split
        self._on_response = on_response
        """Told of every response with its round trip (the adaptive concurrency controller learns here)."""
        self._on_send = on_send
        """Told of every request about to go out, its rate-limit token taken (the controller's slow start)."""
        self.watch = watch
        """Sees every answer (logs the first failure per cause, the recovery; see :mod:`ciotrack.delivery_watch`)."""
        self._views = getattr(destination, "accepts_buffers", False) is True
        """The destination takes a read-only ``memoryview`` of the body as well as bytes (the HTTP one
        hands it to the socket): it gets a view of the native batch, and no 500 KB copy is made."""

    def deliver(self, job: Job, deadline: float | None = None) -> Iterator[Result]:
        """Deliver ``job`` (and the halves of any 413 split), one :class:`Result` per finished piece, in
        order. After a DEADLINE or STOPPED result, each piece not attempted yet follows with the same
        verdict (its job fresh). Consume the iterator to the end: a piece not yielded is not finished.
        ``deadline`` is a ``time.monotonic()`` value (None: no deadline)."""
        pending = [job]
        while pending:
            current = pending.pop()
            result = self._attempt(current, deadline)
            if result is None:  # 413: deliver each half on its own
                first, second = (Job(half) for half in current.batch.split())
                if self._on_split is not None:
                    self._on_split(current.batch, first, second)
                self._recorder.incr("split")
                pending.append(second)
                pending.append(first)
                continue
            yield result
            if result.verdict is Verdict.DEADLINE or result.verdict is Verdict.STOPPED:
                while pending:
                    yield Result(result.verdict, pending.pop(), None, result.reason)

    def _attempt(self, job: Job, deadline: float | None) -> Result | None:
        """Send ``job`` until it finishes; None when it must be split."""
        batch = job.batch
        body = self._body(batch)
        health = self._health
        while True:
            if health is not None and health.down:
                # A batch already ran out of retries and nothing got through since: give this one up
                # at once (its caller may spool it; a probe finds the destination again) rather than
                # hold it in memory for a whole retry budget.
                return Result(Verdict.EXHAUSTED, job, None, DESTINATION_DOWN)
            if not self._take_token(deadline):
                if self._stop.is_set():
                    return Result(Verdict.STOPPED, job, None, "stopped")
                return Result(Verdict.DEADLINE, job, None, "deadline")
            job.sending = True
            try:
                outcome = self._send(body, batch.count)
            finally:
                job.sending = False
            if job.first_attempt is None:
                job.first_attempt = _monotonic()
            try:
                result = self._verdict(job, outcome, deadline, len(body))
            except Exception as exc:
                # Our bug or a destination's odd Outcome (a failures list that raises, a NaN Retry-After):
                # this attempt failed, with its reason; never an exception out of the delivery loop. Given
                # up at once (the caller spools or reports it): retrying would most likely raise again.
                _warn.warning("handling", "ciotrack: handling %s's answer raised %s; the batch is given up",
                              type(self.destination).__name__, type(exc).__name__, exc_info=True)
                return Result(Verdict.EXHAUSTED, job, outcome.status, f"handling_failed: {type(exc).__name__}")
            if not isinstance(result, _Again):
                return result

    def _body(self, batch: Deliverable) -> bytes | memoryview:
        # Only the native Batch exports its body; a fleet worker's batches from Redis are bytes already.
        if self._views and isinstance(batch, Batch):
            return memoryview(batch)  # type: ignore[arg-type]  # no __buffer__ in the 3.11 stub
        return batch.body

    def _verdict(self, job: Job, outcome: Outcome, deadline: float | None,
                 body_bytes: int) -> Result | _Again | None:
        """What ``outcome`` means for ``job`` (whose body is ``body_bytes`` long): a Result, None (split
        it), or :data:`_AGAIN` (after the backoff: send again)."""
        batch = job.batch
        recorder = self._recorder
        health = self._health
        policy = self.policy
        assert job.first_attempt is not None
        kind = outcome.kind
        if kind == "delivered" or kind == "partial":
            if health is not None:
                health.delivered()
            recorder.incr("bytes_sent", body_bytes)
            recorder.observe("batch_ops", batch.count)
            recorder.observe("batch_bytes", body_bytes)
            count = batch.count
            failures = tuple((i, why) for i, why in outcome.failures if 0 <= i < count)
            if len(failures) != len(outcome.failures):
                _warn.warning("index", "ciotrack: a %s answer named %d batch_index(es) outside its batch of %d "
                              "operation(s); ignored", outcome.status, len(outcome.failures) - len(failures), count)
            return Result(Verdict.DELIVERED, job, outcome.status, outcome.reason, failures)
        if kind == "split" and batch.count >= 2:
            return None
        if kind == "final" or kind == "split":
            return Result(Verdict.FAILED, job, outcome.status, outcome.reason)
        job.attempts += 1
        if health is not None:
            health.failed_attempt(answered=outcome.status is not None)
        delay = policy.delay(job.attempts, outcome.retry_after)
        if outcome.status == 429 and self.limiter is not None:
            # Every sender of this limiter waits, not only this one: the server said "slow down".
            self.limiter.pause(delay)
        if policy.gives_up(job.attempts, _monotonic() - job.first_attempt, delay):
            if health is not None:
                health.exhausted()
            return Result(Verdict.EXHAUSTED, job, outcome.status, f"retries exhausted: {outcome.reason}")
        recorder.incr("retried")
        if deadline is not None and _monotonic() + delay > deadline:
            return Result(Verdict.DEADLINE, job, outcome.status, outcome.reason)
        if self._stop.wait(delay):
            return Result(Verdict.STOPPED, job, outcome.status, outcome.reason)
        return _AGAIN

    def _send(self, body: bytes | memoryview, count: int) -> Outcome:
        recorder = self._recorder
        on_send = self._on_send
        if on_send is not None:
            on_send()
        started = _perf_counter()
        try:
            outcome = self.destination.send(body)  # type: ignore[arg-type]  # a view only if accepts_buffers
        except Exception as exc:  # the contract says never raise; a buggy destination still must not kill us
            _warn.warning("send", "ciotrack: %s.send() raised; retried like a request without an answer",
                          type(self.destination).__name__, exc_info=True)
            outcome = Outcome.retry(reason=f"send_raised: {type(exc).__name__}")
        latency = _perf_counter() - started
        recorder.observe("request_latency_seconds", latency)
        recorder.incr(f"requests_{outcome.status}" if outcome.status is not None else "requests_error")
        on_response = self._on_response
        if on_response is not None:
            on_response(latency, outcome)
        if self.watch is not None:
            self.watch.answered(outcome, latency, count, len(body))
        return outcome

    def _take_token(self, deadline: float | None) -> bool:
        limiter = self.limiter
        stop = self._stop
        if limiter is None:
            return not stop.is_set()
        # Waits of at most 1 s: the limiter does not see our stop event (close() closes it as well,
        # which wakes every waiter, but a limiter shared by several pipelines is not closed by one).
        while not stop.is_set():
            wait = 1.0 if deadline is None else min(1.0, deadline - _monotonic())
            if wait <= 0:
                return False
            if limiter.acquire(wait):
                return True
        return False


class _NullRecorder:
    def incr(self, counter: str, n: int = 1) -> None:
        pass

    def observe(self, histogram: str, value: float) -> None:
        pass


_NO_RECORDER: Recorder = _NullRecorder()
