"""The pipeline's sender threads: how many run, and when one more is started.

A fixed concurrency (``senders=N``) starts its N threads at once. Adaptive concurrency starts one per
lane and adds a thread only when a lane's limit has grown past what the running threads can carry
and full batches wait, so a quiet tracker keeps one thread and one socket, and a busy one at 300 ms
grows to the thirty requests in flight that fill 100 requests/s. Threads are never stopped early:
an idle one costs a wake-up per linger period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ciotrack.concurrency import Concurrency

__all__ = ["SenderPool"]

log = logging.getLogger("ciotrack.sender")


class SenderPool:
    """``target(number)`` is a sender loop; at most ``maximum`` of them ever run."""

    def __init__(self, target: Callable[[int], None], *, initial: int, maximum: int) -> None:
        self._target = target
        self.initial = max(1, initial)
        self.maximum = max(self.initial, maximum)
        self.threads: list[threading.Thread] = []
        self.busy = 0
        """Threads inside a delivery (approximate, no lock: it only sizes the pool)."""
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the initial threads; False when not even one could start (interpreter shutdown)."""
        for _ in range(self.initial):
            if not self.add():
                break
        return bool(self.threads)

    def add(self) -> bool:
        number = len(self.threads)
        thread = threading.Thread(target=self._target, args=(number,), name=f"ciotrack-sender-{number}",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
            log.warning("ciotrack: cannot start sender thread %d (%s); %s", number, exc,
                        "going on with fewer" if self.threads else "delivering on the calling thread")
            return False
        self.threads.append(thread)
        return True

    def grow(self, concurrency: Concurrency) -> None:
        """A lane's full batches wait: add a thread if every one is busy and the lane's limit has room."""
        if self.busy >= len(self.threads) and len(self.threads) < self.maximum \
                and concurrency.in_flight < concurrency.limit:
            with self._lock:  # again under the lock: racing threads must not each add one
                if len(self.threads) < self.maximum and self.busy >= len(self.threads):
                    self.add()

    def join(self, deadline: float | None) -> None:
        """Wait for every thread but the caller's until ``deadline`` (``time.monotonic()``; None: 1 s
        each); one still busy (in a request, or not yet back from a wait the stop just ended) is left to
        finish on its own, and said so."""
        current = threading.current_thread()
        for thread in self.threads:
            if thread is not current:
                # Past the deadline, a zero wait: a fixed minimum would add up, one per stuck thread.
                thread.join(1.0 if deadline is None else max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("ciotrack: %s still busy at close(); left to finish on its own", thread.name)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def __contains__(self, thread: object) -> bool:
        return thread in self.threads

    def forget(self) -> None:
        """In a forked child: the parent's threads are not ours."""
        self.threads = []
        self.busy = 0
