"""``ciotrack loadtest --webhooks URL`` hands the run to the reporting-webhook blaster
(``ciotrack.webhooks.blast``): signed webhooks at a real served handler, which verifies them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from ciotrack.__main__ import main
from ciotrack.webhooks import Event, WebhookHandler
from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

SECRET = "loadtest-webhook-secret"


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served_handler() -> Iterator[tuple[str, WebhookHandler, list[Event]]]:
    received: list[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            received.append(event)

    handler = WebhookHandler(SECRET, record)
    server = make_server("127.0.0.1", 0, make_wsgi_app(handler), server_class=_Threading, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks", handler, received
    server.shutdown()
    server.server_close()
    handler.close(5)


def test_webhooks_option_runs_the_blaster(served_handler: tuple[str, WebhookHandler, list[Event]],
                                          tmp_path: Path) -> None:
    url, handler, received = served_handler
    report_path = tmp_path / "webhooks.json"
    code = main(["loadtest", "--webhooks", url, "--webhook-secret", SECRET, "--webhook-rate", "100",
                 "--webhook-duration", "0.5", "--webhook-budget-ms", "4000", "--webhook-report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["requests"] == 50 and report["unexpected"] == 0
    assert handler.drain(5)
    assert len(received) == 50  # every webhook verified and handled by the served handler
