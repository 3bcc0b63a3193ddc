"""The handler threads behind ``WebhookHandler``: a deque, a condition, and wake-ups kept rare.

Why not ``concurrent.futures.ThreadPoolExecutor``: it builds a Future per task and wakes a sleeping
thread for each one. At a webhook every millisecond that wake-up (a futex call, a context switch
and a GIL hand-off with the thread answering the next request) cost 2-4x the verify + dedup it
follows (CPU per ``WebhookHandler.handle()``, measured here). Here a submit is a ``deque.append``;
under load the workers nap ``linger`` seconds between looks at the queue, so one wake-up serves
every event of that interval, and nothing wakes them per event. The answer was sent already: the
nap delays only the user's processing, by at most ``linger``. When the naps find nothing (a low
rate) the workers sleep until ``submit`` wakes them: then each event costs one wake-up, which at
such rates is fewer than the naps would be.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ciotrack.lifecycle import block_exit_signals

T = TypeVar("T")
logger = logging.getLogger("ciotrack.webhooks")

# Items waiting behind the one a worker just took before it wakes another worker to help.
HELP_BACKLOG = 16
# How long the napping worker sleeps between looks at the queue: the longest an event waits to be
# handled while webhooks keep coming, and 1/linger wake-ups a second whatever the rate. Handler
# threads' CPU per event at 1,000/s (bench_webhooks.py -k handler_threads, a 2-core VM at load
# 3-5): 2 ms naps 21-34 us as a Condition wait (the code before; as much as verify + parse),
# 17-27 us as the plain sleep below; 5 ms 13-14 us; 10 ms 7-8.5 us.
DEFAULT_LINGER = 0.005
# Empty naps in a row before the napper sleeps until submit() wakes it. Short: at rates below
# 1/linger most naps find nothing, and a wake-up per event (as ThreadPoolExecutor does) is then
# cheaper than polling. At 1,000/s a 5 ms nap is empty with probability e^-5 (Poisson arrivals),
# two in a row about every two minutes, and then one submit() wakes the worker.
DEEP_AFTER_NAPS = 2


class Workers(Generic[T]):
    """``count`` daemon threads running ``run(item)`` for every submitted item, in order of arrival.

    While items keep coming, an idle worker naps ``linger`` seconds between looks at the queue and
    is never woken by ``submit`` (a nap's end serves every item that arrived during it); after
    ``deep_after`` seconds of naps without an item (default: two naps) it sleeps until ``submit``
    wakes it, so an idle process does not poll."""

    def __init__(self, count: int, run: Callable[[T], object], *, linger: float = DEFAULT_LINGER,
                 deep_after: float | None = None, safety_wake: float = 1.0, name: str = "ciotrack-webhooks") -> None:
        self._run = run
        self._linger = linger
        self._safety_wake = safety_wake
        if deep_after is None:
            deep_after = DEEP_AFTER_NAPS * linger
        self._naps_before_deep = max(1, round(deep_after / linger)) if linger > 0 else 0
        self._queue: collections.deque[T] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._deep_sleepers = 0
        self._napper: int | None = None  # the thread that naps; None: the next idle worker may
        self._stopping = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> None:
        self._queue.append(item)
        # A napping worker will look at the queue within ``linger``: wake nobody. Otherwise wake a
        # deep sleeper. Read without the lock: a worker gives up napping and counts itself a deep
        # sleeper *before* its last look at the queue (under the lock), so either it sees this
        # item or we see it asleep and wake it.
        if self._napper is None and self._deep_sleepers:
            with self._cond:
                self._cond.notify()

    def _loop(self) -> None:
        block_exit_signals()  # the server's SIGTERM must reach its main thread (lifecycle.py)
        queue = self._queue
        me = threading.get_ident()
        empty_naps = 0  # naps in a row that found nothing
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                pass
            else:
                empty_naps = 0
                if self._deep_sleepers and len(queue) >= HELP_BACKLOG:
                    with self._cond:  # a backlog (a slow handler): bring in another worker
                        self._cond.notify()
                try:
                    self._run(item)
                except BaseException:  # even SystemExit from user code must not cost us a worker
                    logger.exception("webhook worker: an item raised past its handler")
                continue
            with self._cond:
                if self._stopping and not queue:
                    return
                # One worker at a time naps (the others sleep deeply): more nappers would only
                # multiply the wake-ups.
                if empty_naps < self._naps_before_deep and self._napper in (None, me):
                    self._napper = me
                else:
                    if self._napper == me:
                        self._napper = None
                    self._deep_sleepers += 1
                    try:
                        if not queue and not self._stopping:
                            self._cond.wait(self._safety_wake)  # the timeout is a safety net only
                    finally:
                        self._deep_sleepers -= 1
                    empty_naps = 0
                    continue
            # The nap, outside the lock: submit() does not wake nappers. A plain sleep costs about half
            # the CPU of a Condition wait (which allocates and times out on a lock of its own): 42 vs
            # 81 us per wake-up in a loop of wake-ups alone on this project's 2-core VM, and at 1,000
            # webhooks/s the wake-ups are nearly all of the handler threads' cost.
            time.sleep(self._linger)
            empty_naps += 1

    def stop(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then end the threads (waits up to ``timeout`` for them)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
