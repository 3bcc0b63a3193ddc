"""A tiny WSGI app for the prefork test: one event per HTTP request.

``gunicorn --preload`` imports this module once, in the master, so the Tracker below is made (and
even used) before the workers fork: each worker must start with an empty queue, its own threads,
locks and Session, and deliver its own events exactly once. Configuration comes from the
``CIOTRACK_*`` environment (endpoint = the test's emulator).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import ciotrack

tracker = ciotrack.Tracker(flush_interval=0.05)
# Queued in the master before any fork: the master alone delivers it.
tracker.track("master", "preloaded", {"pid": os.getpid()})


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    name, _, value = environ.get("QUERY_STRING", "").partition("=")
    n = int(value) if name == "n" and value.isdigit() else -1
    tracker.track(f"visitor-{n % 20}", "request", {"n": n, "pid": os.getpid()})
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
