"""A real WSGI server (threaded, on a free 127.0.0.1 port) around a ``WebhookHandler`` that records
every event it hands on: what the webhook emulator and the load test's blaster are pointed at."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ciotrack.webhooks import Event, WebhookHandler
from ciotrack.webhooks.adapters.wsgi import make_wsgi_app


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_recording_handler(secret: str) -> Iterator[tuple[str, WebhookHandler, list[Event]]]:
    """``(url, handler, received)``; ``received`` fills as the handler's workers run."""
    received: list[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            received.append(event)

    handler = WebhookHandler(secret, record)
    server = make_server("127.0.0.1", 0, make_wsgi_app(handler), server_class=_Threading, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks", handler, received
    finally:
        server.shutdown()
        server.server_close()
        handler.close(5)
