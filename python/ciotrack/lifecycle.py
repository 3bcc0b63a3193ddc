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

SIGTERM. Python's default is to die at once, without atexit. When the first tracker is made in the
main thread and SIGTERM still has its default disposition (no framework installed a handler),
ciotrack installs one that raises ``SystemExit(143)`` in the main thread (``handle_sigterm=False``
opts out): the process unwinds and the exit handler delivers or spools what is queued. It restores
the default first, so a second SIGTERM kills at once. Frameworks with their own handler (gunicorn,
celery) exit normally on SIGTERM, which runs the exit handler anyway. uvicorn's worker processes
(``--workers``, ``--reload``) load the app under uvicorn's handler, then restore the default and
re-raise SIGTERM after their own shutdown: that skips every exit handler (close in the lifespan).

multiprocessing. A ``Process`` child ends with ``os._exit`` after its target returns: atexit never
runs there. A ``multiprocessing.util.Finalize`` registered in each child (through
``register_after_fork``, which survives the child's finalizer reset, or when the child makes its first
tracker, after those hooks ran) closes the trackers instead.

Celery. A prefork pool child ends in ``os._exit`` too, without multiprocessing's exit function
(billiard's worker exits from its own ``finally``), whether recycled (``--max-tasks-per-child``) or
at a warm shutdown: its last act is Celery's ``worker_process_shutdown`` signal, which closes the
trackers once ``celery.signals`` is imported.

A SIGTERM while the exit handler delivers (``Pool.__exit__`` terminates workers that are exiting)
asks for what is already under way: it only restores the default, so a second one kills.

Only weak references are kept here, so Trackers can be garbage-collected; a pipeline stays registered
while its sender threads keep it alive, and is still closed at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ciotrack.pipeline import Pipeline

__all__ = ["block_exit_signals", "register_pipeline", "register_tracker", "close_all"]

log = logging.getLogger("ciotrack.lifecycle")


class ForkAware(Protocol):
    def _rebuild_after_fork(self) -> None: ...

    def _closed_by_exit(self, pipelines: Collection[Pipeline]) -> None: ...


_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_trackers: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_install_lock = threading.Lock()
_installed = False
_sigterm_checked = False
_mp_hooked = False
_mp_finalizer_pid = 0
_celery_hooked = False
_exiting = False


class _Anchor:
    """A long-lived object for ``multiprocessing.util.register_after_fork`` (it keys on a weakref)."""


_MP_ANCHOR = _Anchor()


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
    if not _sigterm_checked and pipeline.config.handle_sigterm:
        _install_sigterm_handler()
    if not _mp_hooked or _mp_finalizer_pid != os.getpid():
        _hook_multiprocessing()
    if not _celery_hooked:
        _hook_celery()


def _install_sigterm_handler() -> None:
    global _sigterm_checked
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works only there; a later tracker made in the main thread tries again
    _sigterm_checked = True
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # no SIGTERM on this platform, or a restricted interpreter
        pass


def block_exit_signals() -> None:
    """Called first by every ciotrack thread. The kernel hands a process-directed SIGTERM/SIGINT to
    any thread that does not block it; received on one of ours, the Python handler waits for the
    main thread's next bytecode, which a main thread asleep in ``time.sleep`` never reaches. Blocked
    here, the signal goes to the main thread and interrupts it."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _exiting:
        return  # the exit handler delivers within its deadline already: cutting it short loses events
    raise SystemExit(128 + signum)


def _hook_multiprocessing() -> None:
    """Make every multiprocessing child close the trackers when its target returns. Only once
    ``multiprocessing`` is imported (never imported for this); checked again at each fork, and when
    a child makes a tracker after its after-fork hooks ran (or a spawned child makes its first)."""
    global _mp_hooked
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    if not _mp_hooked:
        _mp_hooked = True
        util.register_after_fork(_MP_ANCHOR, _register_mp_finalizer)
    process = sys.modules.get("multiprocessing.process")
    if _mp_finalizer_pid != os.getpid() and process is not None and process.parent_process() is not None:
        _register_mp_finalizer(_MP_ANCHOR)


def _register_mp_finalizer(anchor: _Anchor) -> None:
    global _mp_finalizer_pid
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        # exitpriority >= 0 runs in the child's _exit_function, before its os._exit.
        util.Finalize(None, close_all, exitpriority=100)
        _mp_finalizer_pid = os.getpid()


def _hook_celery() -> None:
    """Close the trackers as a Celery pool child ends (it skips atexit and multiprocessing's exit
    function). Only once ``celery.signals`` is imported (never imported for this); checked again at
    each fork. The connection is inherited by the pool's children."""
    global _celery_hooked
    signals = sys.modules.get("celery.signals")
    if signals is None:
        return
    _celery_hooked = True
    signals.worker_process_shutdown.connect(_close_at_pool_child_exit, weak=False,
                                            dispatch_uid="ciotrack.lifecycle.close_all")


def _close_at_pool_child_exit(**_: object) -> None:
    close_all()


def register_tracker(tracker: ForkAware) -> None:
    if not _installed:
        _install()
    _trackers.add(tracker)


def close_all(timeout: float | None = None) -> None:
    """Close every live pipeline (the atexit handler). Bounded: one deadline for all of them."""
    pipelines = []
    for pipeline in list(_pipelines):
        if pipeline.forked_here():  # a parent's, copied by a fork that skipped our at-fork hook
            _pipelines.discard(pipeline)
        elif not pipeline.closed:
            pipelines.append(pipeline)
    if not pipelines:
        return
    global _exiting
    _exiting = True  # the process is on its way out: a SIGTERM from now on must not cut delivery short
    # First, so that calls from threads still running (daemons) are dropped and counted, not queued
    # where nothing will ever send them.
    for tracker in list(_trackers):
        tracker._closed_by_exit(pipelines)
    budget = timeout if timeout is not None else max(p.config.exit_timeout for p in pipelines)
    deadline = time.monotonic() + budget
    interrupted = False
    for pipeline in pipelines:
        remaining = 0.0 if interrupted else max(0.0, min(pipeline.config.exit_timeout, deadline - time.monotonic()))
        try:
            pipeline.close(remaining)
        except Exception:  # never turn a clean exit into a traceback
            log.exception("ciotrack: closing a tracker at exit failed")
        except BaseException as exc:
            # A signal handler's SystemExit/KeyboardInterrupt (gunicorn's quick shutdown, a second
            # Ctrl-C) while the process already exits: close() accounted for what it could not
            # deliver (spooled or reported); the others account for theirs at once. Re-raised, it
            # would only print "Exception ignored in atexit callback" and a traceback.
            interrupted = True
            log.warning("ciotrack: delivery at exit cut short by %s; what was not delivered is spooled or "
                        "reported", type(exc).__name__)


def _after_fork_in_child() -> None:
    # Runs in the child's only thread, before any other Python code of the child (multiprocessing
    # runs its after-fork registry later, so hooking it here still covers this very child).
    if not _mp_hooked and _pipelines:
        _hook_multiprocessing()
    if not _celery_hooked and _pipelines:
        _hook_celery()
    pid = os.getpid()
    for pipeline in list(_pipelines):
        if pipeline.pid == pid:
            continue  # built in this child already (a tracker used by an earlier at-fork hook): keep it
        pipeline.forget_after_fork()
        _pipelines.discard(pipeline)
    for tracker in list(_trackers):
        try:
            tracker._rebuild_after_fork()
        except Exception:
            log.exception("ciotrack: rebuilding a tracker after fork failed")
