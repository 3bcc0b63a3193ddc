"""Process lifecycle: deliver at interpreter exit, rebuild after ``fork()``.

Exit. One ``atexit`` handler closes every live pipeline within its ``exit_timeout`` (one shared
deadline: the longest configured), so operations queued without a ``flush()`` still reach
Customer.io, and exit never hangs. Sender threads are daemons, alive while atexit handlers run; if they
were never started (``sync=True``, or Python 3.12+ refusing new threads at shutdown), ``close()``
delivers on the exiting thread instead of starting one.

Fork. ``os.register_at_fork(after_in_child=...)`` rebuilds every live Tracker in the child: a new core
(empty lanes: the parent delivers what it had queued), new locks, events, Session and, lazily, threads.
The core also detects forks that bypass Python (``FORKED`` return code); the Tracker then rebuilds
itself on its next call.

Only weak references are kept here, so Trackers can be garbage-collected; a pipeline stays registered
while its sender threads keep it alive, and is still closed at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ciotrack.sender import Pipeline

__all__ = ["register_pipeline", "register_tracker", "close_all"]

log = logging.getLogger("ciotrack.lifecycle")


class ForkAware(Protocol):
    def _rebuild_after_fork(self) -> None: ...


_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_trackers: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        atexit.register(close_all)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
        _installed = True


def register_pipeline(pipeline: Pipeline) -> None:
    if not _installed:
        _install()
    _pipelines.add(pipeline)


def register_tracker(tracker: ForkAware) -> None:
    if not _installed:
        _install()
    _trackers.add(tracker)


def close_all(timeout: float | None = None) -> None:
    """Close every live pipeline (the atexit handler). Bounded: one deadline for all of them."""
    pipelines = [p for p in list(_pipelines) if not p.closed]
    if not pipelines:
        return
    budget = timeout if timeout is not None else max(p.config.exit_timeout for p in pipelines)
    deadline = time.monotonic() + budget
    for pipeline in pipelines:
        remaining = max(0.0, min(pipeline.config.exit_timeout, deadline - time.monotonic()))
        try:
            pipeline.close(remaining)
        except Exception:  # never turn a clean exit into a traceback
            log.exception("ciotrack: closing a tracker at exit failed")


def _after_fork_in_child() -> None:
    # Runs in the child's only thread, before any other Python code of the child.
    for pipeline in list(_pipelines):
        pipeline.forget_after_fork()
        _pipelines.discard(pipeline)
    for tracker in list(_trackers):
        try:
            tracker._rebuild_after_fork()
        except Exception:
            log.exception("ciotrack: rebuilding a tracker after fork failed")
